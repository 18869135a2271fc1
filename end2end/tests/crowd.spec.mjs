// A crowd study in a real Chromium: the admin creates a Telepathy and a Travel study on the page, a worker opens
// each Prolific link, consents, plays the episode against the expert agent (typing an XSS payload), and gets one
// completion code; reloading or reopening the link shows no code again. The admin then sees the episodes with
// their rewards, the worker's text inert in the transcript, and exports CSV and JSONL.
import { test, expect } from '@playwright/test';
import { PASSWORD, PAYLOAD, createStudy, hydrated, playEpisodes, signIn } from './crowd-helpers.mjs';

async function playThrough(page, slug) {
  await page.goto(`/study/${slug}?PROLIFIC_PID=e2eworker1&STUDY_ID=st&SESSION_ID=se`);
  await hydrated(page);
  const code = await playEpisodes(page, PAYLOAD);
  await expect(page.locator('a.return')).toHaveAttribute('href', `https://app.prolific.com/submissions/complete?cc=${code}`);
  return code;
}

test('a worker completes Telepathy and Travel through Prolific links; the admin reviews and exports', async ({ browser }) => {
  expect(PASSWORD, 'scripts/e2e sets E2E_ADMIN_PASSWORD').toBeTruthy();
  const adminContext = await browser.newContext();
  const admin = await adminContext.newPage();
  await signIn(admin);
  const ids = { telepathy: await createStudy(admin, 'telepathy'), travel: await createStudy(admin, 'travel') };

  const workerContext = await browser.newContext();
  const worker = await workerContext.newPage();
  const errors = [];
  worker.on('pageerror', (e) => errors.push(String(e)));
  for (const gym of ['telepathy', 'travel']) {
    const code = await playThrough(worker, `e2e-${gym}`);
    // Reloading, or opening the link again, shows the study as done and never a code.
    await worker.reload();
    await hydrated(worker);
    await expect(worker.locator('.study-done h2')).toHaveText('You have completed this study');
    expect(await worker.content()).not.toContain(code);
    await worker.goto(`/study/e2e-${gym}?PROLIFIC_PID=e2eworker1&STUDY_ID=st&SESSION_ID=se`);
    await expect(worker.locator('.study-done h2')).toHaveText('You have completed this study');
    expect(await worker.content()).not.toContain(code);
  }
  expect(errors).toEqual([]);

  let dialogs = 0;
  admin.on('dialog', (d) => { dialogs += 1; d.dismiss(); });
  for (const gym of ['telepathy', 'travel']) {
    const id = ids[gym];
    await admin.goto(`/admin/studies/${id}`);
    await hydrated(admin);
    const row = admin.locator('table.study-episodes tbody tr');
    await expect(row).toHaveCount(1);
    await expect(row.locator('td.score')).toHaveText(/^-?\d/);
    await row.locator('a').first().click();
    await expect(admin).toHaveURL(/\/episodes\/\d+$/);
    await expect(admin.locator('.messages')).toBeVisible();
    const csv = await admin.request.get(`/api/admin/studies/${id}/export.csv`);
    expect(csv.status()).toBe(200);
    expect((await csv.text()).trim().split('\n')).toHaveLength(2);
    const jsonl = await admin.request.get(`/api/admin/studies/${id}/export.jsonl`);
    const line = JSON.parse((await jsonl.text()).trim());
    expect(line.episode.gym).toBe(gym);
    // Every answer is exported with what the person chose and typed: the button picked ("ordinary
    // conversation") and the text, exactly (compare values, not a JSON string, whose quotes are escaped).
    if (gym === 'travel') {
      const values = line.answers.flatMap((a) => Object.values(a.answer.values));
      expect(values).toContain('conversation');
      expect(values).toContain(PAYLOAD);
    }
  }
  // The worker's markup is text on the admin's pages: nothing ran.
  expect(await admin.evaluate(() => window.__xss)).toBeUndefined();
  expect(dialogs).toBe(0);
  await adminContext.close();
  await workerContext.close();
});
