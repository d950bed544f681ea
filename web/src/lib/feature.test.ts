import { describe, expect, it } from 'vitest'
import { makeEnvelope } from '../test/envelope'
import { Features, type Feature } from './feature'

const posts: Feature = {
  name: 'posts',
  routes: [{ path: '/feeds', element: null }],
  nav: { to: '/feeds', label: 'Feeds' },
  live: { types: ['PostCreated'] },
  describe: {
    PostUpdated: (e) => `changed ${String(e.data.what)}`,
    PostDeleted: () => {
      throw new Error('no data')
    },
  },
  streamPage: (s) => (s.startsWith('post-') ? `/posts/${s.slice(5)}` : null),
  resync: [['posts']],
}
const audit: Feature = { name: 'audit', nav: { to: '/audit', label: 'Audit log' }, live: { types: '*' } }

describe('Features', () => {
  it("puts the features together: routes, nav in list order, every type they name, their resync keys", () => {
    const f = new Features([posts, audit])
    expect(f.nav.map((n) => n.label)).toEqual(['Feeds', 'Audit log'])
    expect(f.routes.map((r) => r.path)).toEqual(['/feeds'])
    expect([...f.eventTypes].sort()).toEqual(['PostCreated', 'PostDeleted', 'PostUpdated'])
    expect(f.handlers).toHaveLength(2)
    expect(f.resyncKeys).toEqual([['posts']])
  })

  it("describes an event by its feature's words, or else by its type", () => {
    const f = new Features([posts, audit])
    expect(f.describe(makeEnvelope({ type: 'PostUpdated', data: { what: 'the title' } }))).toBe('changed the title')
    expect(f.describe(makeEnvelope({ type: 'PostDeleted' }))).toBe('post deleted')
    expect(f.describe(makeEnvelope({ type: 'SomethingNew2Happened' }))).toBe('something new2 happened')
  })

  it('links a stream to the page of the feature that has one', () => {
    const f = new Features([audit, posts])
    expect(f.streamPage('post-p1')).toBe('/posts/p1')
    expect(f.streamPage('user-u1')).toBeNull()
  })

  it('refuses two features describing one type or routing one path', () => {
    expect(() => new Features([posts, { name: 'x', describe: { PostUpdated: () => '' } }])).toThrow(/PostUpdated/)
    expect(() => new Features([posts, { name: 'x', routes: [{ path: '/feeds', element: null }] }])).toThrow(/\/feeds/)
  })
})
