// The web app in a real Chromium, on a database filled by a real short training run (scripts/e2e).
import { test, expect } from '@playwright/test';
import { execFileSync } from 'node:child_process';

const RUN = process.env.E2E_RUN_ID;
const HARNESS = process.env.E2E_HARNESS;
const DB = process.env.E2E_DB;
const SCREENSHOT = process.env.E2E_SCREENSHOT;

async function open(page, path) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(path);
  // Clicks before hydration hit inert HTML: wait until the WASM has taken over.
  await expect(page.locator('main[data-hydrated="true"]')).toBeAttached({ timeout: 30_000 });
  return errors;
}

test('the runs page lists the run', async ({ page }) => {
  const errors = await open(page, '/');
  const row = page.locator(`tr.run[data-run-id="${RUN}"]`);
  await expect(row).toContainText('e2e-tiny');
  await expect(row).toContainText('finished');
  // Client-side filtering works after hydration.
  await page.fill('input.filter', 'no-such-run-name');
  await expect(row).toHaveCount(0);
  await page.fill('input.filter', 'e2e');
  await expect(row).toHaveCount(1);
  expect(errors).toEqual([]);
});

test('the run page draws a chart with points and shows new metrics live', async ({ page }) => {
  const errors = await open(page, `/runs/${RUN}`);
  const reward = page.locator('figure.chart[data-key="reward"] .plot-wrap');
  await expect(reward).toBeVisible();
  const points = Number(await reward.getAttribute('data-points'));
  expect(points).toBeGreaterThan(0);
  await expect(reward.locator('svg polyline').first()).toBeAttached();
  // Smoothing redraws in the browser (raw line faint + smoothed line).
  await page.locator('input[type="range"]').fill('0.9');
  await expect(page.locator('.chart-controls .num')).toHaveText('0.90');

  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT, fullPage: false });
  }

  // Another process appends a point through the store; the open page gets it over SSE without reload.
  await expect(page.locator('section.run-page[data-live="open"]')).toBeAttached();
  execFileSync(HARNESS, ['append', '--db', DB, '--run', RUN, '--step', '1000', '--key', 'reward', '--value', '0.75']);
  await expect(reward).toHaveAttribute('data-last-step', '1000', { timeout: 20_000 });
  await expect(reward.locator('.x-labels .last')).toHaveText('last 0.7500');
  expect(errors).toEqual([]);
});

test('runs added to the comparison are live too', async ({ page }) => {
  const other = execFileSync(HARNESS, ['create', '--db', DB, '--name', 'e2e-other']).toString().trim();
  execFileSync(HARNESS, ['append', '--db', DB, '--run', other, '--step', '1', '--key', 'reward', '--value', '0.1']);
  const errors = await open(page, `/runs/${RUN}?compare=${other}`);
  const line = page.locator(`figure.chart[data-key="reward"] .legend .swatch[data-run="${other}"]`);
  await expect(line).toHaveAttribute('data-last-step', '1');
  await expect(page.locator('section.run-page[data-live="open"]')).toBeAttached();
  execFileSync(HARNESS, ['append', '--db', DB, '--run', other, '--step', '50', '--key', 'reward', '--value', '0.2']);
  await expect(line).toHaveAttribute('data-last-step', '50', { timeout: 20_000 });
  expect(errors).toEqual([]);
});

test('the run page shows progress in its phase and links checkpoints to the chat', async ({ page }) => {
  const errors = await open(page, `/runs/${RUN}`);
  // The tiny run ends with its evaluation (2 episodes); SFT and GRPO steps never mix in the count.
  await expect(page.locator('.run-header .progress')).toHaveText(/^(SFT|GRPO|eval) \d+ \/ \d+$/);
  const chat = page.locator('tr.checkpoint a.chat').first();
  await expect(chat).toHaveAttribute('href', new RegExp(`^/chat\\?run=${RUN}&checkpoint=[\\w.-]+$`));
  expect(errors).toEqual([]);
});

test('a transcript opens and shows turns with rewards', async ({ page }) => {
  const errors = await open(page, `/runs/${RUN}/transcripts?kind=train`);
  const first = page.locator('tr.transcript a.open').first();
  await expect(first).toBeVisible();
  await first.click();
  await expect(page).toHaveURL(/\/transcripts\/\d+$/);
  await expect(page.locator('.msg-agent').first()).toBeVisible();
  await expect(page.locator('.msg-user, .msg-tool').first()).toBeVisible();
  await expect(page.locator('.turn-reward').first()).toContainText('reward');
  expect(errors).toEqual([]);
});

test('script and img payloads in a transcript render as text', async ({ page }) => {
  const errors = await open(page, `/runs/${RUN}/transcripts?step=999`);
  await page.locator('tr.transcript a.open').first().click();
  await expect(page).toHaveURL(/\/transcripts\/\d+$/);
  const user = page.locator('.msg-user .text').first();
  await expect(user).toContainText('<script>window.__xss = 1</script>');
  await expect(user).toContainText('<img src=x onerror=');
  await expect(page.locator('.messages script')).toHaveCount(0);
  await expect(page.locator('.messages img')).toHaveCount(0);
  expect(await page.evaluate(() => window.__xss)).toBeUndefined();
  expect(errors).toEqual([]);
});

test('the eval page and a GRPO group render', async ({ page }) => {
  await open(page, '/eval');
  await expect(page.locator('h1')).toHaveText('Evaluations');
  await open(page, `/runs/${RUN}/transcripts?kind=train`);
  await page.locator('tr.transcript td:nth-child(2) a').first().click();
  await expect(page).toHaveURL(/\/groups\/\d+\/\d+$/);
  await expect(page.locator('article.rollout').first()).toBeVisible();
});
