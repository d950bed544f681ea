import { describe, expect, it } from 'vitest'
import { TAG_VOCABULARY, randomPost, seededRandom } from './random'
import { isTag } from './tags'

const chars = (s: string) => [...s].length
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/
const sentences = (s: string) => s.split(/(?<=[.!?])\s+/).filter(Boolean)

describe('randomPost', () => {
  it('writes posts herald accepts: a one-line title, 2–5 real sentences, 1–4 tags of the vocabulary', () => {
    const counts = new Set<number>()
    const tagCounts = new Set<number>()
    for (let seed = 1; seed <= 300; seed++) {
      const p = randomPost(seededRandom(seed))
      expect(chars(p.title)).toBeGreaterThan(0)
      expect(chars(p.title)).toBeLessThanOrEqual(200)
      expect(p.title).not.toMatch(CONTROL)
      expect(p.title).toMatch(/^[A-Z]/)
      expect(chars(p.content)).toBeGreaterThan(0)
      expect(chars(p.content)).toBeLessThanOrEqual(20_000)
      expect(p.content).not.toMatch(/\{|\}/)
      const s = sentences(p.content)
      expect(s.length).toBeGreaterThanOrEqual(2)
      expect(s.length).toBeLessThanOrEqual(5)
      for (const one of s) expect(one).toMatch(/^[A-Z].*[.!?]$/)
      counts.add(s.length)
      expect(p.tags.length).toBeGreaterThanOrEqual(1)
      expect(p.tags.length).toBeLessThanOrEqual(4)
      expect(new Set(p.tags).size).toBe(p.tags.length)
      for (const t of p.tags) {
        expect(TAG_VOCABULARY).toContain(t)
        expect(isTag(t)).toBe(true)
      }
      tagCounts.add(p.tags.length)
    }
    // Every length comes up.
    expect([...counts].sort()).toEqual([2, 3, 4, 5])
    expect([...tagCounts].sort()).toEqual([1, 2, 3, 4])
  })

  it('is the same post for the same seed, and another for another', () => {
    expect(randomPost(seededRandom(42))).toEqual(randomPost(seededRandom(42)))
    const titles = new Set(Array.from({ length: 20 }, (_, i) => randomPost(seededRandom(i)).content))
    expect(titles.size).toBeGreaterThan(15)
  })
})
