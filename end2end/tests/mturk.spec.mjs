// A worker takes an MTurk study inside MTurk's cross-site frame, where the site's SameSite=Strict cookies are
// never sent: the page keeps its session token and sends it in headers, so the worker consents, plays and gets
// the code and the HIT submit form all the same. The MTurk page is a stand-in served by Playwright at MTurk's
// sandbox address (the study page may only be framed by MTurk's hosts).
import { test, expect } from '@playwright/test';
import { PASSWORD, createStudy, hydrated, playEpisodes, signIn } from './crowd-helpers.mjs';

const MTURK = 'https://workersandbox.mturk.com';

// The stand-in MTurk page counts as a public site and the test server listens on loopback: Chromium's Local
// Network Access checks would block that frame (a real deployment is public on both sides). This file's browser
// runs without them; everything else is the config's.
test.use({
  launchOptions: {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-features=LocalNetworkAccessChecks'],
  },
});

test('inside MTurk\'s frame a worker completes a study without cookies', async ({ browser, baseURL }) => {
  expect(PASSWORD, 'scripts/e2e sets E2E_ADMIN_PASSWORD').toBeTruthy();
  const adminContext = await browser.newContext();
  const admin = await adminContext.newPage();
  await signIn(admin);
  await createStudy(admin, 'travel', 'mturk');

  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const params = new URLSearchParams({ workerId: 'TURKW1', assignmentId: 'TURKA1', hitId: 'TURKH1', turkSubmitTo: MTURK });
  const src = `${baseURL}/study/e2e-travel-mturk?${params}`;
  await page.route(`${MTURK}/**`, (route) => route.fulfill({
    contentType: 'text/html',
    body: `<!doctype html><title>HIT</title><iframe id="hit" src="${src}" width="1100" height="900"></iframe>`,
  }));
  await page.goto(`${MTURK}/projects/e2e/tasks/1`);
  const frame = page.frameLocator('#hit');
  await hydrated(frame);
  const code = await playEpisodes(frame, 'a plain answer');
  const submit = frame.locator('form.mturk-submit');
  await expect(submit).toHaveAttribute('action', `${MTURK}/mturk/externalSubmit`);
  await expect(submit.locator('input[name="assignmentId"]')).toHaveValue('TURKA1');
  await expect(submit.locator('input[name="completion_code"]')).toHaveValue(code);
  // The session never rode on a cookie: the browser holds none of the study's.
  const cookies = await context.cookies(baseURL);
  expect(cookies.map((c) => c.name)).not.toContain('userrl_study_e2e-travel-mturk');
  expect(errors).toEqual([]);
  await adminContext.close();
  await context.close();
});
