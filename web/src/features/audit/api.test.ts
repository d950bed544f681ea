import { QueryClient, type InfiniteData } from '@tanstack/react-query'
import { describe, expect, it } from 'vitest'
import type { Envelope } from '../../lib/types'
import { makeEnvelope } from '../../test/envelope'
import { appendToAudit, auditKey, type AuditWindow } from './api'

let pos = 100
const ev = (stream: string, version: number, type: string): Envelope => makeEnvelope({ position: ++pos, stream, version, type })

describe('appendToAudit', () => {
  it('puts new matching events at the top of each cached audit view, once', () => {
    const qc = new QueryClient()
    const all = auditKey({})
    const onlyStarts = auditKey({ type: 'DeploymentStarted' })
    const empty: InfiniteData<AuditWindow, number | null> = { pages: [{ events: [], after: 0, through: pos }], pageParams: [null] }
    qc.setQueryData(all, empty)
    qc.setQueryData(onlyStarts, empty)
    const a = ev('deployment-b', 1, 'DeploymentStarted')
    const b = ev('deployment-b', 2, 'DeploymentSucceeded')
    appendToAudit(qc, [a, b])
    appendToAudit(qc, [b])
    const top = (key: readonly unknown[]) =>
      qc.getQueryData<InfiniteData<AuditWindow>>(key)!.pages[0].events.map((e) => e.position)
    expect(top(all)).toEqual([b.position, a.position])
    expect(top(onlyStarts)).toEqual([a.position])
  })
})
