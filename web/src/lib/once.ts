// One form = one command: the ids of a command are made when the form is
// filled, not when it is sent, so a double click or a retry is the same
// command (herald answers a repeated `command_id` with its first result).

import { newId } from './api'

export interface CommandIds {
  /** The new aggregate's id (a StartDeployment makes a new stream). */
  aggregateId: string
  commandId: string
}

/**
 * Sends at most one command at a time, with the same ids until one succeeds:
 * a second submit while one is under way gets the same promise; after a
 * failure the next submit repeats the same command; after a success the next
 * one is a new command with new ids.
 */
export class OnceCommand<T> {
  private current: CommandIds
  private inFlight: Promise<T> | null = null

  constructor(private readonly makeId: () => string = newId) {
    this.current = { aggregateId: makeId(), commandId: makeId() }
  }

  get ids(): CommandIds {
    return this.current
  }

  get pending(): boolean {
    return this.inFlight !== null
  }

  /** The form now says something else: the next submit is a new command (unless one is under way). */
  renew(): void {
    if (!this.inFlight) this.current = { aggregateId: this.makeId(), commandId: this.makeId() }
  }

  submit(send: (ids: CommandIds) => Promise<T>): Promise<T> {
    if (this.inFlight) return this.inFlight
    const p = (async () => {
      try {
        const result = await send(this.current)
        this.current = { aggregateId: this.makeId(), commandId: this.makeId() }
        return result
      } finally {
        this.inFlight = null
      }
    })()
    this.inFlight = p
    return p
  }
}
