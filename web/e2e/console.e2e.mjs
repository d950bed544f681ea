// End-to-end test of the web console in a real browser against a real herald.
//
//   node --test web/e2e/console.e2e.mjs      (./scripts/test runs it after the cargo tests)
//
// It drives Debian's Chromium (never a downloaded browser) through playwright-core,
// with the CDP virtual WebAuthn authenticator standing in for a passkey, against
// the herald binary cargo built (target/debug/herald, which serves web/dist):
//
//   1. the first user registers with an admin invite made by `herald invite create`
//      before herald serves (the first-run "Set up herald" screen where herald
//      asks for a setup code, the invite form where it does not) and is admin;
//   2. the admin creates an operator invite on the Admin page; a second browser
//      context opens the invite link and registers as operator;
//   3. the operator starts a deployment and reports progress; the admin's open
//      dashboard shows both without a reload;
//   4. herald is killed with SIGKILL mid-session: both tabs say so, then go Live
//      again on their own once it is back on the same port and data directory;
//   5. more changes (one from an API token while the tabs reconnect, the rest from
//      the operator's tab); every tab shows every event exactly once, compared with
//      what `GET /api/events` returns;
//   6. a double-click on Start makes one deployment, and the form clears;
//   7. an action dialog stays open, with its text, when the deployment finishes
//      underneath it, and shows herald's refusal;
//   8. posts: the operator writes a post tagged release and ops in the editor;
//      the admin's open /feeds/release shows it without a reload; the operator
//      removes the tag release, and the admin's feed lets it go while /feeds/ops
//      has it;
//   9. eight tabs of one browser share one live connection (one EventSource)
//      and one deployments resource stream, all receive the same event, and
//      when the leading tab closes another takes over and nothing is missed.
//
// Screenshots of each page go to target/screenshots/. Environment:
//   HERALD_BIN   the herald binary (default target/debug/herald)
//   CHROMIUM     the browser (default /usr/bin/chromium)

import { spawn, execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const HERALD_BIN = process.env.HERALD_BIN ?? path.join(ROOT, 'target/debug/herald')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
const SHOTS = path.join(ROOT, 'target/screenshots')
const LOGS = path.join(ROOT, 'target/e2e')
/** One expectation (a page shows something) may take this long on a slow box. */
const WAIT = 20_000
/** A tab that lost herald retries with a back-off (up to 30 s apart): it may take this long to be Live again. */
const RECOVER = 45_000
/** The whole run, browser and herald included. */
const OVERALL = 4 * 60_000

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// --- herald ------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

class Herald {
  constructor(port, dataDir, logFile) {
    this.port = port
    this.dataDir = dataDir
    this.logFile = logFile
    this.child = null
    this.starts = 0
  }

  get origin() {
    return `http://localhost:${this.port}`
  }

  async start() {
    assert.equal(this.child, null, 'herald is already running')
    this.starts++
    fs.appendFileSync(this.logFile, `\n===== herald start #${this.starts} (${new Date().toISOString()})\n`)
    const log = fs.openSync(this.logFile, 'a')
    const child = spawn(
      HERALD_BIN,
      [
        'serve',
        '--data', this.dataDir,
        '--listen', `127.0.0.1:${this.port}`,
        '--public-origin', this.origin,
        '--command-rate', '0',
      ],
      { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } },
    )
    fs.closeSync(log)
    this.child = child
    let exited = null
    child.once('exit', (code, signal) => {
      exited = { code, signal }
      if (this.child === child) this.child = null
    })
    const deadline = Date.now() + 30_000
    for (;;) {
      if (exited) throw new Error(`herald exited at start (${JSON.stringify(exited)}); see ${this.logFile}`)
      try {
        const res = await fetch(`http://127.0.0.1:${this.port}/healthz`, { signal: AbortSignal.timeout(2_000) })
        if (res.ok) return
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`herald did not answer /healthz within 30 s; see ${this.logFile}`)
      await sleep(100)
    }
  }

  /** Sends `signal` and waits for the process to be gone. */
  async stop(signal = 'SIGKILL', graceMs = 15_000) {
    const child = this.child
    if (!child) return
    const gone = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve()
      else child.once('exit', resolve)
    })
    child.kill(signal)
    const timedOut = await Promise.race([gone.then(() => false), sleep(graceMs).then(() => true)])
    if (timedOut) {
      child.kill('SIGKILL')
      await gone
    }
    this.child = null
    if (timedOut) throw new Error(`herald did not exit within ${graceMs} ms of ${signal}`)
  }

  /** `herald invite create` on the data directory (also before herald serves): the code. */
  mintInvite(role) {
    const out = execFileSync(
      HERALD_BIN,
      ['invite', 'create', '--data', this.dataDir, '--role', role, '--public-origin', this.origin],
      { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    return out.trim().split('\n').pop().trim()
  }

  /** `herald token create` on the same data directory, while serving. */
  mintToken(name, role) {
    const out = execFileSync(HERALD_BIN, ['token', 'create', '--data', this.dataDir, '--name', name, '--role', role], {
      encoding: 'utf8',
      timeout: 30_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    return out.trim().split('\n').pop().trim()
  }

  async api(token, method, p, body) {
    const res = await fetch(`http://127.0.0.1:${this.port}${p}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`)
    return text ? JSON.parse(text) : null
  }

  /** Every event in the log, in position order. */
  async allEvents(token) {
    const events = []
    let afterPos = 0
    for (;;) {
      const page = await this.api(token, 'GET', `/api/events?after=${afterPos}&limit=1000`)
      events.push(...page.events)
      if (page.events.length === 0 || page.next_after >= page.head) return events
      afterPos = page.next_after
    }
  }
}

// --- browser helpers -----------------------------------------------------------

/** Retries `fn` until it returns something other than false/undefined, or throws the last reason. */
async function until(what, fn, timeout = WAIT) {
  const deadline = Date.now() + timeout
  let last = null
  for (;;) {
    try {
      const v = await fn()
      if (v !== false && v !== undefined) return v
      last = null
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`)
    }
    await sleep(150)
  }
}

const status = (page) => page.getByTestId('connection-status')

async function expectStatus(page, who, wanted, timeout = WAIT) {
  const want = Array.isArray(wanted) ? wanted : [wanted]
  await until(`${who}'s connection indicator to say ${want.join(' or ')}`, async () => {
    const s = await status(page).getAttribute('data-status', { timeout: 1_000 })
    return want.includes(s)
  }, timeout)
  const label = { live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline' }
  const text = await status(page).innerText()
  assert.ok(
    want.some((w) => text.includes(label[w])),
    `${who}'s indicator reads ${JSON.stringify(text)}, expected ${want.map((w) => label[w]).join(' or ')}`,
  )
}

async function newUser(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' })
  context.setDefaultTimeout(WAIT)
  const page = await context.newPage()
  const errors = []
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`))
  // What the page did, printed when a step fails.
  const trace = []
  const note = (line) => {
    trace.push(`${new Date().toISOString().slice(11, 23)} ${line}`)
    if (trace.length > 300) trace.shift()
  }
  page.on('console', (m) => note(`console.${m.type()}: ${m.text()}`))
  page.on('response', (r) => {
    if (r.url().includes('/api/')) note(`${r.status()} ${r.request().method()} ${r.url().replace(/^https?:\/\/[^/]+/, '')}`)
  })
  page.on('requestfailed', (r) => note(`failed ${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  // Each page gets its own authenticator: a passkey lives on one "device".
  const cdp = await context.newCDPSession(page)
  await cdp.send('WebAuthn.enable')
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  })
  return { name, context, page, errors, trace }
}

async function shot(page, file, opts = {}) {
  await page.screenshot({ path: path.join(SHOTS, file), ...opts })
}

/** Marks the document: a reload would lose the mark. */
const markDocument = (page) => page.evaluate(() => (window.__heraldE2e = 'no reload'))
const stillSameDocument = async (page) => (await page.evaluate(() => window.__heraldE2e)) === 'no reload'

/** Registers through the form on the current page (login page or invite link). */
async function register(page, username, displayName) {
  await page.getByRole('tab', { name: 'Create account' }).click()
  await page.getByLabel('Username').fill(username)
  await page.getByLabel('Display name').fill(displayName)
  await page.getByRole('button', { name: 'Create account with a passkey' }).click()
  await page.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
}

/** Clicks `button`, then goes through the step-up dialog if herald asks for one, until `done` is visible. */
async function clickWithStepUp(page, button, done, how = 'click') {
  await (how === 'dblclick' ? button.dblclick() : button.click())
  const dialog = page.getByRole('alertdialog').filter({ hasText: 'Confirm it is you' })
  await until('the command to go through', async () => {
    if (await done.isVisible()) return true
    if (await dialog.isVisible()) {
      await dialog.getByRole('button', { name: 'Confirm with passkey' }).click()
      await dialog.waitFor({ state: 'hidden' })
    }
    return false
  })
}

async function navigate(page, link) {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: link, exact: true }).click()
}

/** Positions and types on the audit page, top to bottom. */
const auditRows = (page) =>
  page.$$eval('[data-testid="audit-event"]', (rows) =>
    rows.map((r) => ({
      position: Number(r.cells[0].innerText.trim()),
      type: r.cells[3].querySelector('p')?.innerText.trim() ?? '',
    })),
  )

/** Versions, positions and types on a deployment's timeline, top to bottom. */
const timelineRows = (page) =>
  page.$$eval('[data-testid="timeline-event"]', (items) =>
    items.map((li) => {
      const m = /· (\w+) · version (\d+) · position (\d+)/.exec(li.innerText)
      return m ? { type: m[1], version: Number(m[2]), position: Number(m[3]) } : { type: '?', version: NaN, position: NaN }
    }),
  )

function assertExactlyOnce(who, shown, truth) {
  const positions = shown.map((r) => r.position)
  const dupes = positions.filter((p, i) => positions.indexOf(p) !== i)
  assert.deepEqual(dupes, [], `${who} shows positions more than once: ${dupes.join(', ')}`)
  const want = truth.map((e) => e.position)
  assert.deepEqual(
    [...positions].sort((a, b) => a - b),
    want,
    `${who} shows positions ${positions.join(',')}; the log has ${want.join(',')}`,
  )
  const types = new Map(truth.map((e) => [e.position, e.type]))
  for (const r of shown) assert.equal(r.type, types.get(r.position), `${who}: the type at position ${r.position}`)
}

// --- the run -------------------------------------------------------------------

const s = {
  herald: null,
  browser: null,
  admin: null,
  operator: null,
  token: null,
  deploymentId: null,
  tmp: null,
  adminInvite: null,
}

/** Starts a deployment of `service` with the API token, as CI would; its id. */
async function startViaApi(service) {
  const id = randomUUID()
  await s.herald.api(s.token, 'POST', '/api/commands', {
    type: 'StartDeployment',
    aggregate_id: id,
    expected_version: 0,
    data: { service },
  })
  return id
}

let cleanedUp = false
async function cleanup() {
  if (cleanedUp) return
  cleanedUp = true
  try {
    await s.browser?.close()
  } catch {
    // already gone
  }
  try {
    await s.herald?.stop('SIGTERM', 10_000)
  } catch (e) {
    console.error(`e2e: ${e.message}`)
  }
}
// Never leave herald behind, whatever happens.
process.on('exit', () => s.herald?.child?.kill('SIGKILL'))

let failed = false
/** Steps run in order; after a failure the rest are skipped, except those that need only the signed-in admin. */
function step(name, fn, timeout = 90_000, { independent = false } = {}) {
  test(name, { timeout }, async (t) => {
    if (failed && !(independent && s.admin && s.token && s.herald?.child)) {
      t.skip('an earlier step failed')
      return
    }
    try {
      await fn(t)
    } catch (e) {
      failed = true
      for (const u of [s.admin, s.operator]) {
        if (!u) continue
        await shot(u.page, `failure-${u.name}.png`, { fullPage: true }).catch(() => {})
        console.error(`--- what the ${u.name}'s page did\n${u.trace.join('\n')}`)
      }
      if (s.herald) {
        const log = fs.existsSync(s.herald.logFile) ? fs.readFileSync(s.herald.logFile, 'utf8') : ''
        console.error(`--- last lines of ${s.herald.logFile}\n${log.split('\n').slice(-30).join('\n')}`)
      }
      throw e
    }
  })
}

before(async () => {
  const watchdog = setTimeout(() => {
    console.error(`e2e: still running after ${OVERALL / 1000} s; giving up`)
    cleanup().finally(() => process.exit(1))
  }, OVERALL)
  watchdog.unref()

  assert.ok(fs.existsSync(HERALD_BIN), `${HERALD_BIN} is missing: run cargo build -p herald first`)
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`)
  fs.mkdirSync(SHOTS, { recursive: true })
  fs.mkdirSync(LOGS, { recursive: true })
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.rmSync(path.join(SHOTS, f))
  s.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-e2e-'))
  const logFile = path.join(LOGS, 'herald.log')
  fs.writeFileSync(logFile, '')
  s.herald = new Herald(await freePort(), path.join(s.tmp, 'data'), logFile)
  // The first admin's code, made before herald serves (as an operator would on a new install).
  s.adminInvite = s.herald.mintInvite('admin')
  await s.herald.start()
  const home = await fetch(`http://127.0.0.1:${s.herald.port}/`).then((r) => r.text())
  assert.ok(!home.includes('console was not built'), 'herald serves no console: build web/dist first (npm run build in web/)')
  s.browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic'],
    timeout: 60_000,
  })
})

after(async () => {
  await cleanup()
  if (!failed && s.tmp) fs.rmSync(s.tmp, { recursive: true, force: true })
})

step('the first user registers with a passkey and becomes admin', async () => {
  s.admin = await newUser(s.browser, 'admin')
  const { page } = s.admin
  await page.goto(`${s.herald.origin}/`)
  // A herald that waits for its first admin shows "Set up herald" (asking for the
  // setup code); an older one, the sign-in screen.
  const setupForm = page.getByRole('form', { name: 'Set up herald' })
  const signIn = page.getByRole('button', { name: 'Sign in with a passkey' })
  await until('the first-run screen or the sign-in screen', async () => (await setupForm.isVisible()) || (await signIn.isVisible()))
  assert.match(page.url(), /\/login\?next=%2F$/)
  await shot(page, 'login.png')
  await page.goto(`${s.herald.origin}/register?invite=${encodeURIComponent(s.adminInvite)}`)
  const inviteForm = page.getByRole('form', { name: 'Create account' })
  const firstRun = await until('the first-run or the invite form', async () =>
    (await setupForm.isVisible()) ? 'setup' : (await inviteForm.isVisible()) ? 'invite' : false,
  )
  const form = firstRun === 'setup' ? setupForm : inviteForm
  if (firstRun === 'invite') assert.equal(await form.getByLabel('Invite code').inputValue(), s.adminInvite)
  else assert.equal(await form.getByLabel('Setup code').inputValue(), s.adminInvite)
  await form.getByLabel('Username').fill('alice')
  await form.getByLabel('Display name').fill('Alice Admin')
  await shot(page, 'register.png')
  await form
    .getByRole('button', { name: firstRun === 'setup' ? 'Create the admin account with a passkey' : 'Create account with a passkey' })
    .click()
  await page.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
  await page.getByText('Alice Admin').first().waitFor()
  assert.match(await page.locator('header').innerText(), /\(admin/)
  await expectStatus(page, 'admin', 'live')
  await page.getByText('No deployments yet').waitFor()
  await markDocument(page)
  // An admin token for reading the truth; minted by the CLI while herald serves.
  s.token = s.herald.mintToken('e2e', 'admin')
  assert.match(s.token, /\S{20,}/)
})

step('the admin invites an operator, who registers from the link in a second browser', async () => {
  const admin = s.admin.page
  await navigate(admin, 'Admin')
  await admin.getByRole('heading', { name: 'Admin', level: 1 }).waitFor()
  await admin.getByRole('tab', { name: 'Invites' }).click()
  await admin.getByLabel('Role of the new account').selectOption('operator')
  await admin.getByRole('button', { name: 'Create invite' }).click()
  const linkField = admin.getByRole('textbox', { name: 'Invite link' })
  await linkField.waitFor()
  const link = await linkField.inputValue()
  assert.match(link, new RegExp(`^${s.herald.origin}/register\\?invite=\\S+$`))
  await admin.getByRole('table', { name: 'Invites' }).getByText('Open').waitFor()
  await shot(admin, 'admin-invites.png', { fullPage: true })
  await admin.getByRole('tab', { name: 'Users and roles' }).click()
  await admin.getByRole('table', { name: 'Users' }).waitFor()

  s.operator = await newUser(s.browser, 'operator')
  const op = s.operator.page
  await op.goto(link)
  await op.getByText('You were invited to herald').waitFor()
  assert.notEqual(await op.getByLabel('Invite code').inputValue(), '')
  await shot(op, 'register-invite.png')
  await register(op, 'bob', 'Bob Operator')
  assert.match(await op.locator('header').innerText(), /\(operator\)/)
  await expectStatus(op, 'operator', 'live')
  await markDocument(op)

  // The admin's open Users tab picks up the new account from the log.
  await admin.getByRole('table', { name: 'Users' }).getByText('Bob Operator').waitFor()
  await shot(admin, 'admin-users.png', { fullPage: true })
  await navigate(admin, 'Deployments')
  await admin.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
  await expectStatus(admin, 'admin', 'live')
})

step("the operator starts a deployment; the admin's open dashboard shows it and its progress", async () => {
  const op = s.operator.page
  const admin = s.admin.page
  await op.getByRole('textbox', { name: /^Service/ }).fill('user-service')
  await op.getByLabel('Version', { exact: true }).fill('1.4.2')
  await op.getByLabel('Environment', { exact: true }).fill('prod')
  const opRow = op.locator('tr[data-testid^="deployment-"]').filter({ hasText: 'user-service' })
  await clickWithStepUp(op, op.getByRole('button', { name: 'Start', exact: true }), opRow)
  s.deploymentId = (await opRow.getAttribute('data-testid')).slice('deployment-'.length)

  const adminRow = admin.locator(`tr[data-testid="deployment-${s.deploymentId}"]`)
  await adminRow.getByText('In progress').waitFor()
  await adminRow.getByText('bob', { exact: true }).waitFor()

  await op.getByRole('button', { name: 'Report progress of user-service 1.4.2 to prod' }).click()
  const dialog = op.getByRole('dialog').filter({ hasText: 'Percent done' })
  await dialog.getByLabel('Percent done').fill('40')
  await dialog.getByLabel('Message').fill('canary ok')
  await dialog.getByRole('button', { name: 'Report progress' }).click()
  await dialog.waitFor({ state: 'hidden' })

  await adminRow.getByText('canary ok').waitFor()
  await adminRow.getByText('40%').waitFor()
  assert.equal(await admin.locator('tr[data-testid^="deployment-"]').count(), 1)
  assert.ok(await stillSameDocument(admin), "the admin's dashboard was reloaded")
  await shot(admin, 'dashboard.png')

  // The operator follows it on its own page.
  await op.getByRole('link', { name: 'user-service' }).click()
  await op.getByRole('heading', { name: 'user-service 1.4.2 to prod', level: 1 }).waitFor()
  await until('the timeline to show 2 events', async () => (await timelineRows(op)).length === 2)
  await shot(op, 'deployment-detail.png', { fullPage: true })

  // The admin watches the audit log.
  await navigate(admin, 'Audit log')
  await admin.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor()
  await admin.getByText('Hash chain intact').waitFor()
  await until('the audit log to list DeploymentProgressed', async () =>
    (await auditRows(admin)).some((r) => r.type === 'DeploymentProgressed'),
  )
})

step('herald is killed with SIGKILL: both tabs say so, then go Live again on their own', async () => {
  await s.herald.stop('SIGKILL')
  await Promise.all([
    expectStatus(s.admin.page, 'admin', ['reconnecting', 'offline']),
    expectStatus(s.operator.page, 'operator', ['reconnecting', 'offline']),
  ])
  await shot(s.admin.page, 'reconnecting.png')
  await s.herald.start()
  // A change while the tabs are still away: they must catch up on it.
  await s.herald.api(s.token, 'POST', '/api/commands', {
    type: 'ReportDeploymentProgress',
    aggregate_id: s.deploymentId,
    data: { percent: 60, message: 'from CI while the console reconnects' },
  })
  await Promise.all([expectStatus(s.admin.page, 'admin', 'live', RECOVER), expectStatus(s.operator.page, 'operator', 'live', RECOVER)])
  const op = s.operator.page
  await op.getByText('from CI while the console reconnects').first().waitFor()
  await op.getByText('60%').first().waitFor()
  // The summary follows the read model (its resource stream), which may come a moment after the
  // timeline's events: the next step's dialog must start from the state that has the CI report.
  await op.getByTestId('deployment-summary').getByText('from CI while the console reconnects').waitFor()
})

step('the operator changes more after the restart; every tab shows every event exactly once', async () => {
  const op = s.operator.page
  const admin = s.admin.page

  await op.getByRole('button', { name: 'Report progress of user-service 1.4.2 to prod' }).click()
  let dialog = op.getByRole('dialog').filter({ hasText: 'Percent done' })
  await dialog.getByLabel('Percent done').fill('80')
  await dialog.getByLabel('Message').fill('half the fleet')
  await dialog.getByRole('button', { name: 'Report progress' }).click()
  await dialog.waitFor({ state: 'hidden' })
  await op.getByText('80%').first().waitFor()

  await op.getByRole('button', { name: 'Mark user-service 1.4.2 to prod as succeeded' }).click()
  dialog = op.getByRole('dialog').filter({ hasText: 'marked as succeeded' })
  await dialog.getByRole('button', { name: 'Mark as succeeded' }).click()
  await dialog.waitFor({ state: 'hidden' })
  await op.locator('[data-status="succeeded"]').first().waitFor()

  // A second deployment, from the operator's dashboard (client-side navigation).
  await op.getByRole('link', { name: 'All deployments' }).click()
  await op.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
  await op.getByRole('textbox', { name: /^Service/ }).fill('billing')
  const billing = op.locator('tr[data-testid^="deployment-"]').filter({ hasText: 'billing' })
  await clickWithStepUp(op, op.getByRole('button', { name: 'Start', exact: true }), billing)

  // The truth, from the API.
  const truth = await s.herald.allEvents(s.token)
  const head = truth[truth.length - 1].position
  assert.deepEqual(
    truth.map((e) => e.position),
    Array.from({ length: head }, (_, i) => i + 1),
    'the log has gaps',
  )
  for (const t of ['UserRegistered', 'InviteCreated', 'TokenCreated', 'DeploymentStarted', 'DeploymentSucceeded'])
    assert.ok(truth.some((e) => e.type === t), `the log has no ${t}`)
  const stream = truth.filter((e) => e.stream === `deployment-${s.deploymentId}`)
  assert.deepEqual(
    stream.map((e) => e.type),
    ['DeploymentStarted', 'DeploymentProgressed', 'DeploymentProgressed', 'DeploymentProgressed', 'DeploymentSucceeded'],
  )

  // The admin's audit log, open since before the restart.
  await until(`the admin's audit log to reach position ${head}`, async () =>
    (await auditRows(admin)).some((r) => r.position === head),
  )
  assert.equal(await admin.getByRole('button', { name: /Load older events/ }).count(), 0, 'the log fits one page')
  assertExactlyOnce("the admin's audit log", await auditRows(admin), truth)
  const rows = await auditRows(admin)
  assert.deepEqual(
    rows.map((r) => r.position),
    [...rows.map((r) => r.position)].sort((a, b) => b - a),
    'the audit log is newest first',
  )
  // The chain check ran when the page opened; the page says what came after it.
  await admin.getByText(/\d+ newer events? ha(s|ve) not been checked yet/).waitFor()
  await admin.getByRole('button', { name: 'Check again' }).click()
  await admin.getByText(`All ${head} events up to position ${head} match their hashes.`).waitFor()
  await shot(admin, 'audit-log.png', { fullPage: true })

  // The operator's timeline of user-service, open since before the restart, then left.
  await op.goBack()
  await op.getByRole('heading', { name: 'user-service 1.4.2 to prod', level: 1 }).waitFor()
  await until('the timeline to show 5 events', async () => (await timelineRows(op)).length >= 5)
  const timeline = await timelineRows(op)
  assert.deepEqual(
    timeline,
    stream.map((e) => ({ type: e.type, version: e.version, position: e.position })),
    "the operator's timeline differs from the stream",
  )
  await op.getByText('Succeeded').first().waitFor()
  await shot(op, 'deployment-detail-done.png', { fullPage: true })

  // The operator's audit log.
  await navigate(op, 'Audit log')
  await op.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor()
  await until(`the operator's audit log to reach position ${head}`, async () =>
    (await auditRows(op)).some((r) => r.position === head),
  )
  assertExactlyOnce("the operator's audit log", await auditRows(op), truth)

  // The admin's dashboard again: its stream starts with the list as it is now.
  await navigate(admin, 'Deployments')
  const list = await s.herald.api(s.token, 'GET', '/api/deployments')
  assert.equal(list.deployments.length, 2)
  const adminRows = admin.locator('tr[data-testid^="deployment-"]')
  await admin.locator(`tr[data-testid="deployment-${s.deploymentId}"]`).getByText('Succeeded').waitFor()
  await adminRows.filter({ hasText: 'billing' }).getByText('In progress').waitFor()
  assert.equal(await adminRows.count(), 2, 'the admin dashboard shows each deployment once')
  assert.ok(await stillSameDocument(admin), "the admin's tab was reloaded")
  assert.ok(await stillSameDocument(op), "the operator's tab was reloaded")
  await shot(admin, 'dashboard-after-restart.png')
  assert.deepEqual([...s.admin.errors, ...s.operator.errors], [], 'uncaught errors in the pages')
})

step('herald stops gracefully (SIGTERM) while both tabs stream; they recover and follow on', async () => {
  const op = s.operator.page
  const admin = s.admin.page
  await s.herald.stop('SIGTERM', 15_000)
  await Promise.all([
    expectStatus(admin, 'admin', ['reconnecting', 'offline']),
    expectStatus(op, 'operator', ['reconnecting', 'offline']),
  ])
  await s.herald.start()
  await Promise.all([expectStatus(admin, 'admin', 'live', RECOVER), expectStatus(op, 'operator', 'live', RECOVER)])

  // The admin (an operator too) cancels billing from its dashboard.
  await admin.getByRole('button', { name: 'Cancel billing' }).click()
  const dialog = admin.getByRole('dialog').filter({ hasText: 'Cancel the deployment' })
  await dialog.getByLabel('Reason').fill('rolled back')
  await dialog.getByRole('button', { name: 'Cancel the deployment' }).click()
  await dialog.waitFor({ state: 'hidden' })
  await admin.locator('tr[data-testid^="deployment-"]').filter({ hasText: 'billing' }).getByText('Cancelled').waitFor()

  const truth = await s.herald.allEvents(s.token)
  const head = truth[truth.length - 1].position
  assert.equal(truth[truth.length - 1].type, 'DeploymentCancelled')
  // The operator's audit log, open across this restart.
  await until(`the operator's audit log to reach position ${head}`, async () =>
    (await auditRows(op)).some((r) => r.position === head),
  )
  assertExactlyOnce("the operator's audit log", await auditRows(op), truth)
  assert.equal(await admin.locator('tr[data-testid^="deployment-"]').count(), 2)
  assert.ok(await stillSameDocument(admin), "the admin's tab was reloaded")
  assert.ok(await stillSameDocument(op), "the operator's tab was reloaded")
  assert.deepEqual([...s.admin.errors, ...s.operator.errors], [], 'uncaught errors in the pages')
})

step("an operator's post appears in the admin's open feed without a reload, and leaves it when its tag goes", async () => {
  const op = s.operator.page
  const admin = s.admin.page
  // Loudly, if herald has no posts yet (issue 10's server side).
  const feedsNow = await s.herald.api(s.token, 'GET', '/api/feeds')
  assert.ok(Array.isArray(feedsNow?.feeds), `GET /api/feeds answered ${JSON.stringify(feedsNow)}: herald has no feeds`)
  assert.equal(feedsNow.feeds.some((f) => f.tag === 'release'), false, 'a post is tagged release already')

  // The admin opens the feed of a tag no post has yet.
  await admin.goto(`${s.herald.origin}/feeds/release`)
  await admin.getByRole('heading', { name: '#release', level: 1 }).waitFor()
  await admin.getByTestId('feed-empty').waitFor()
  await expectStatus(admin, 'admin', 'live')
  await markDocument(admin)

  // The operator writes a post in the editor: tags as chips, Enter or a comma ends one.
  await navigate(op, 'Feeds')
  await op.getByRole('heading', { name: 'Feeds', level: 1 }).waitFor()
  await op.getByRole('link', { name: 'New post' }).click()
  await op.getByRole('heading', { name: 'New post', level: 1 }).waitFor()
  const title = 'Release 1.5 is out'
  await op.getByRole('textbox', { name: /^Title/ }).fill(title)
  await op.getByRole('textbox', { name: /^Text/ }).fill('The rollout went to every region.\nNothing paged anyone.')
  const tags = op.getByRole('textbox', { name: 'Tags' })
  await tags.fill('Release')
  await tags.press('Enter')
  await tags.pressSequentially(' ops,')
  assert.deepEqual(await op.getByTestId('tag-chip').allInnerTexts(), ['release', 'ops'])
  await shot(op, 'post-editor.png')
  const written = op.getByTestId('post-title')
  await clickWithStepUp(op, op.getByRole('button', { name: 'Create post' }), written)
  assert.equal(await written.innerText(), title)
  const opened = new URL(op.url())
  const m = /^\/posts\/([^/]+)$/.exec(opened.pathname)
  assert.ok(m, `after writing, the operator is on ${opened.pathname}, not the post's page`)
  const postId = decodeURIComponent(m[1])
  assert.match(opened.search, /min_position=\d+/, 'the post page was not told the position to wait for')
  const view = await s.herald.api(s.token, 'GET', `/api/posts/${encodeURIComponent(postId)}`)
  assert.deepEqual(view.tags, ['release', 'ops'])
  assert.equal(view.title, title)

  // The admin's open feed shows it, without a reload.
  const card = admin.getByTestId(`post-card-${postId}`)
  await card.getByRole('link', { name: title }).waitFor()
  assert.ok(await stillSameDocument(admin), "the admin's feed was reloaded")
  await shot(admin, 'feed-release.png')

  // The operator takes the tag release off.
  await op.getByRole('link', { name: 'Edit post' }).click()
  await op.getByRole('heading', { name: 'Edit post', level: 1 }).waitFor()
  await op.getByRole('button', { name: 'Remove tag release' }).click()
  assert.deepEqual(await op.getByTestId('tag-chip').allInnerTexts(), ['ops'])
  await clickWithStepUp(op, op.getByRole('button', { name: 'Save changes' }), op.getByText('removed the tag release'))
  await op.getByTestId('post-title').waitFor()
  assert.equal((await op.getByRole('list', { name: 'Tags' }).innerText()).trim(), '#ops')

  // The admin's feed lets it go and stays open; herald agrees, and ops has it.
  await card.waitFor({ state: 'detached' })
  await admin.getByTestId('feed-empty').waitFor()
  assert.ok(await stillSameDocument(admin), "the admin's feed was reloaded")
  const release = await fetch(`http://127.0.0.1:${s.herald.port}/api/feeds/release`, {
    headers: { authorization: `Bearer ${s.token}` },
    signal: AbortSignal.timeout(10_000),
  })
  assert.equal(release.status, 404, 'herald still has a feed for release')
  const ops = await s.herald.api(s.token, 'GET', '/api/feeds/ops')
  assert.ok(ops.posts.some((p) => p.id === postId), `herald's ops feed lacks the post: ${JSON.stringify(ops.posts.map((p) => p.id))}`)
  await navigate(admin, 'Feeds')
  await admin.getByTestId('feed-ops').waitFor()
  assert.equal(await admin.getByTestId('feed-release').count(), 0, 'the feeds still list release')
  await admin.getByTestId('feed-ops').getByRole('link', { name: '#ops' }).click()
  await admin.getByTestId(`post-card-${postId}`).getByRole('link', { name: title }).waitFor()
  assert.ok(await stillSameDocument(admin), "the admin's tab was reloaded")
  await shot(admin, 'feed-ops.png')
  assert.deepEqual([...s.admin.errors, ...s.operator.errors], [], 'uncaught errors in the pages')
  await navigate(admin, 'Deployments')
  await admin.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
})

step('screenshots: the dashboard at phone width and in dark mode', async () => {
  const admin = s.admin.page
  await admin.setViewportSize({ width: 375, height: 812 })
  await admin.getByTestId(`deployment-card-${s.deploymentId}`).waitFor()
  assert.equal(await admin.locator('table[aria-label="Deployments"]').isVisible(), false, 'the table is hidden on phones')
  await shot(admin, 'dashboard-phone.png', { fullPage: true })
  await admin.emulateMedia({ colorScheme: 'dark' })
  await until('the console to turn dark', () => admin.evaluate(() => document.documentElement.classList.contains('dark')))
  await shot(admin, 'dashboard-phone-dark.png', { fullPage: true })
  await admin.setViewportSize({ width: 1280, height: 900 })
  await admin.locator(`tr[data-testid="deployment-${s.deploymentId}"]`).waitFor()
  await shot(admin, 'dashboard-dark.png')
})

step('the Users tab follows a role change made elsewhere, and a Save keeps it', async () => {
  const admin = s.admin.page
  await navigate(admin, 'Admin')
  await admin.getByRole('tab', { name: 'Users and roles' }).click()
  const row = admin.getByRole('table', { name: 'Users' }).getByRole('row').filter({ hasText: 'Bob Operator' })
  await row.waitFor()
  const box = (role) => row.getByRole('checkbox', { name: role, exact: true })
  const label = (role) => row.locator('label').filter({ hasText: new RegExp(`^${role}$`) })
  const save = row.getByRole('button', { name: 'Save roles of bob' })
  const { users } = await s.herald.api(s.token, 'GET', '/api/users')
  const bob = users.find((u) => u.username === 'bob')
  assert.ok(bob, 'bob is listed')
  await until('bob to show as operator', async () => (await box('operator').isChecked()) && !(await box('viewer').isChecked()))

  // Another admin makes bob a viewer: the open row follows, and there is nothing to save.
  await s.herald.api(s.token, 'PUT', `/api/users/${bob.id}/roles`, { roles: ['viewer'] })
  await until('the row to show the new roles', async () => (await box('viewer').isChecked()) && !(await box('operator').isChecked()))
  assert.equal(await save.isDisabled(), true, 'Save is offered though nothing was changed here')

  // An edit here (add admin) while another change lands (add operator): both are kept.
  await label('admin').click()
  await until('admin to be ticked', () => box('admin').isChecked())
  await s.herald.api(s.token, 'PUT', `/api/users/${bob.id}/roles`, { roles: ['viewer', 'operator'] })
  await until('the row to show the change made elsewhere under the edit', () => box('operator').isChecked())
  assert.equal(await box('admin').isChecked(), true, 'the edit made here was lost')
  await save.click()
  await until('the roles to be saved', async () => {
    const list = await s.herald.api(s.token, 'GET', '/api/users')
    const roles = [...list.users.find((u) => u.username === 'bob').roles].sort()
    return roles.join() === 'admin,operator,viewer'
  })
  await until('Save to be done', () => save.isDisabled())
  await shot(admin, 'admin-users-roles.png', { fullPage: true })
  await navigate(admin, 'Deployments')
  await admin.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
}, 90_000, { independent: true })

step('a double-click on Start makes one deployment, and the form clears for the next one', async () => {
  const admin = s.admin.page
  const before = (await s.herald.api(s.token, 'GET', '/api/deployments')).deployments.length
  const service = admin.getByRole('textbox', { name: /^Service/ })
  await service.fill('double')
  await admin.getByLabel('Version', { exact: true }).fill('2.0')
  await admin.getByLabel('Environment', { exact: true }).fill('staging')
  const rows = admin.locator('tr[data-testid^="deployment-"]').filter({ hasText: 'double' })
  await clickWithStepUp(admin, admin.getByRole('button', { name: 'Start', exact: true }), rows.first(), 'dblclick')
  // Time for a second command to land, if one was sent.
  await sleep(1_500)
  const after = (await s.herald.api(s.token, 'GET', '/api/deployments')).deployments
  assert.equal(after.filter((d) => d.service === 'double').length, 1, 'a double-click started more than one deployment')
  assert.equal(after.length, before + 1)
  assert.equal(await rows.count(), 1)
  assert.equal(await service.inputValue(), '', 'the form keeps the service after success')
  assert.equal(await admin.getByLabel('Version', { exact: true }).inputValue(), '')
  assert.equal(await admin.getByLabel('Environment', { exact: true }).inputValue(), '')
}, 90_000, { independent: true })

step('an action dialog stays open with its text when the deployment finishes underneath it, and shows the refusal', async () => {
  const admin = s.admin.page
  const id = await startViaApi('dialog-test')
  const row = admin.locator(`tr[data-testid="deployment-${id}"]`)
  await row.getByText('In progress').waitFor()
  await row.getByRole('button', { name: 'Mark dialog-test as failed' }).click()
  const dialog = admin.getByRole('dialog').filter({ hasText: 'Mark as failed' })
  await dialog.getByLabel('Reason').fill('typed before it finished')
  // Someone else finishes it meanwhile.
  await s.herald.api(s.token, 'POST', '/api/commands', { type: 'SucceedDeployment', aggregate_id: id })
  await row.getByText('Succeeded').waitFor()
  await dialog.getByText('This deployment changed while this dialog was open').waitFor()
  assert.equal(await dialog.getByLabel('Reason').inputValue(), 'typed before it finished', 'the typed reason was lost')
  await dialog.getByRole('button', { name: 'Mark as failed' }).click()
  const refusal = dialog.getByRole('alert')
  await refusal.waitFor()
  const words = await refusal.innerText()
  assert.match(words, /changed this first|not in progress|finished|already/i, `the dialog says ${JSON.stringify(words)}`)
  await shot(admin, 'dialog-refused.png')
  await dialog.getByRole('button', { name: 'Close' }).click()
  await dialog.waitFor({ state: 'hidden' })
}, 90_000, { independent: true })

step('eight tabs of one browser share one live connection and one resource stream, all get the same event, and the next tab takes over', async () => {
  const { context, page: first } = s.admin
  await first.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
  // Every live stream this browser opens from now on: the log's, and the resource streams (`…/live`).
  const streams = []
  const resourceStreams = []
  context.on('request', (r) => {
    const p = new URL(r.url()).pathname
    if (p === '/api/events/live') streams.push(r.url())
    else if (p.startsWith('/api/') && p.endsWith('/live')) resourceStreams.push(r.url())
  })
  const tabs = [first]
  for (let i = 2; i <= 8; i++) {
    const p = await context.newPage()
    p.on('pageerror', (e) => s.admin.errors.push(`tab ${i}: ${e.message}`))
    await p.goto(`${s.herald.origin}/`)
    await p.getByRole('heading', { name: 'Deployments', exact: true, level: 1 }).waitFor()
    tabs.push(p)
  }
  await Promise.all(tabs.map((p, i) => expectStatus(p, `tab ${i + 1}`, 'live')))
  const id = await startViaApi('fan-out')
  await Promise.all(tabs.map((p) => p.locator(`tr[data-testid="deployment-${id}"]`).getByText('In progress').waitFor()))
  for (const p of tabs) assert.equal(await p.locator(`tr[data-testid="deployment-${id}"]`).count(), 1)
  assert.deepEqual(streams, [], 'the seven new tabs opened live streams of their own: the first tab leads')
  assert.deepEqual(resourceStreams, [], 'the seven new tabs opened resource streams of their own: the first tab runs them for all')

  // The leading tab closes: another takes the lock and resumes, with one stream.
  await first.close()
  const rest = tabs.slice(1)
  await until('one tab to open the live stream again', async () => streams.length >= 1)
  await until('one tab to open the deployments stream again', async () => resourceStreams.length >= 1)
  await s.herald.api(s.token, 'POST', '/api/commands', {
    type: 'ReportDeploymentProgress',
    aggregate_id: id,
    data: { percent: 50, message: 'after the hand-over' },
  })
  await Promise.all(rest.map((p) => p.locator(`tr[data-testid="deployment-${id}"]`).getByText('after the hand-over').waitFor()))
  await Promise.all(rest.map((p, i) => expectStatus(p, `tab ${i + 2}`, 'live')))
  assert.equal(streams.length, 1, `after the hand-over the browser opened ${streams.length} live streams: ${streams.join(' ')}`)
  assert.deepEqual(
    resourceStreams.map((u) => new URL(u).pathname),
    ['/api/deployments/live'],
    `after the hand-over the browser opened these resource streams: ${resourceStreams.join(' ')}`,
  )
  // Resumed from where the old leader stopped.
  assert.match(streams[0], /after=\d+/)
  await shot(rest[0], 'eight-tabs.png')
  assert.deepEqual(s.admin.errors, [], 'uncaught errors in the pages')
}, 90_000, { independent: true })
