// The chat page in a real Chromium (scripts/e2e): the tiny run's checkpoint is loaded from the page, a reply
// streams in token by token, a <script> message stays text, and a gym played as the user ends with its reward.
import { test, expect } from '@playwright/test';

const RUN = process.env.E2E_RUN_ID;
const PAYLOAD = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">';

async function open(page, path) {
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(path);
  await expect(page.locator('main[data-hydrated="true"]')).toBeAttached({ timeout: 30_000 });
  return errors;
}

// Loading a checkpoint is an operator's action: sign in as the admin scripts/e2e set up.
async function signIn(page) {
  const password = process.env.E2E_ADMIN_PASSWORD;
  if (!password) return; // no admin: this machine may load models
  await page.goto('/admin/login');
  await expect(page.locator('main[data-hydrated="true"]')).toBeAttached({ timeout: 30_000 });
  await page.fill('form.auth-form input[name="password"]', password);
  await page.click('form.auth-form button[type="submit"]');
  await expect(page).toHaveURL(/\/admin$/);
}

// Selects the run's latest checkpoint (`?run=`), loading it when it is not served yet.
async function loadCheckpoint(page) {
  const chosen = page.locator('select[name="model"] option:checked');
  await expect(chosen).toContainText(`run${RUN}-step`);
  if (!(await chosen.textContent()).includes('(loaded)')) {
    await page.getByRole('button', { name: 'Load checkpoint' }).click();
  }
  await expect(chosen).toContainText('(loaded)', { timeout: 60_000 });
}

async function setNumber(page, name, value) {
  const input = page.locator(`input[name="${name}"]`);
  await input.fill(String(value));
  await input.press('Tab');
}

test('the chat page streams a reply from a loaded checkpoint and shows a script payload as text', async ({ page }) => {
  await signIn(page);
  const errors = await open(page, `/chat?run=${RUN}`);
  await loadCheckpoint(page);
  await setNumber(page, 'max_tokens', 48);
  // Count the updates of the reply being written: a streamed reply grows in several steps.
  await page.evaluate(() => {
    window.__updates = 0;
    new MutationObserver(() => {
      const el = document.querySelector('.msg-agent.streaming .text');
      if (el && el.textContent.length > 0) window.__updates += 1;
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.fill('textarea[name="message"]', PAYLOAD);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
  await expect(page.locator('.chat-log .msg-human .text')).toHaveText(PAYLOAD);
  await expect(page.locator('.chat .finish')).toContainText('tokens', { timeout: 60_000 });
  await expect(page.locator('.chat-log .msg-agent')).toHaveCount(1);
  expect(await page.evaluate(() => window.__updates)).toBeGreaterThan(1);
  await expect(page.locator('.chat-log script')).toHaveCount(0);
  await expect(page.locator('.chat-log img')).toHaveCount(0);
  expect(await page.evaluate(() => window.__xss)).toBeUndefined();
  // Regenerate replaces the reply; reset clears the chat.
  await page.getByRole('button', { name: 'Regenerate' }).click();
  await expect(page.locator('.chat .finish')).toContainText('tokens', { timeout: 60_000 });
  await expect(page.locator('.chat-log .msg-agent')).toHaveCount(1);
  await page.getByRole('button', { name: 'Reset' }).click();
  await expect(page.locator('.chat-log .msg')).toHaveCount(0);
  expect(errors).toEqual([]);
});

test('playing a gym as the user shows the hidden goal and ends with the reward', async ({ page }) => {
  await signIn(page);
  const errors = await open(page, `/chat?run=${RUN}`);
  await loadCheckpoint(page);
  await setNumber(page, 'max_tokens', 24);
  await page.getByRole('tab', { name: 'Play a gym as the user' }).click();
  await page.selectOption('select[name="gym"]', 'telepathy');
  await expect(page.locator('.play-setup dl.briefing dt').first()).toHaveText('The entity you have in mind');
  await page.getByRole('button', { name: 'Start the episode' }).click();
  await expect(page.locator('.human-episode')).toBeVisible();
  await expect(page.locator('.human-episode .episode-brief dt').first()).toHaveText('The entity you have in mind');
  // Answer whatever the agent asks (a tiny model rarely asks) until the episode ends.
  const outcome = page.locator('.human-episode .outcome');
  for (let i = 0; i < 40 && (await outcome.count()) === 0; i++) {
    const form = page.locator('form.prompt');
    if (await form.count()) {
      for (const text of await form.locator('textarea').all()) await text.fill('No idea.');
      for (const scale of await form.locator('.control-scale').all()) await scale.locator('.scale-point').nth(3).click();
      const submit = form.locator('button[type="submit"]');
      const groups = await form.locator('.control-buttons').all();
      for (const group of groups) await group.locator('.choice').last().click();
      if (await submit.count()) await submit.click();
    }
    await page.waitForTimeout(500);
  }
  await expect(outcome).toBeVisible({ timeout: 30_000 });
  await expect(outcome.locator('.termination')).not.toBeEmpty();
  await expect(outcome.locator('.score')).toContainText('normalised');
  await expect(outcome).toContainText('Stored as episode');
  expect(errors).toEqual([]);
});
