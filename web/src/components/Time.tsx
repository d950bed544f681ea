import { useEffect, useState } from 'react'

const rtf = typeof Intl !== 'undefined' && 'RelativeTimeFormat' in Intl ? new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' }) : null

export function relative(iso: string, now = Date.now()): string {
  const t = Date.parse(iso)
  if (Number.isNaN(t)) return iso
  const s = Math.round((t - now) / 1000)
  const abs = Math.abs(s)
  if (!rtf) return new Date(t).toLocaleString()
  if (abs < 45) return rtf.format(s, 'second')
  if (abs < 45 * 60) return rtf.format(Math.round(s / 60), 'minute')
  if (abs < 22 * 3600) return rtf.format(Math.round(s / 3600), 'hour')
  if (abs < 26 * 86400) return rtf.format(Math.round(s / 86400), 'day')
  return new Date(t).toLocaleDateString()
}

/** A time as "2 minutes ago", with the exact time on hover and for assistive tech. */
export function Time({ iso, absolute = false }: { iso: string; absolute?: boolean }) {
  const [, tick] = useState(0)
  useEffect(() => {
    if (absolute) return
    const id = setInterval(() => tick((n) => n + 1), 30_000)
    return () => clearInterval(id)
  }, [absolute])
  const exact = Number.isNaN(Date.parse(iso)) ? iso : new Date(iso).toLocaleString()
  return (
    <time dateTime={iso} title={exact}>
      {absolute ? exact : relative(iso)}
    </time>
  )
}
