// What the crowd browser tests share: waiting for hydration, signing in, creating a study on the admin page,
// and playing the assigned episodes on a worker page (or inside a frame of one). Not a spec file itself.
import { expect } from '@playwright/test';

export const PASSWORD = process.env.E2E_ADMIN_PASSWORD;
export const PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';

export async function hydrated(page) {
  await expect(page.locator('main[data-hydrated="true"]')).toBeAttached({ timeout: 30_000 });
}

export async function signIn(page) {
  await page.goto('/admin/login');
  await hydrated(page);
  await page.fill('form.auth-form input[name="password"]', PASSWORD);
  await page.click('form.auth-form button[type="submit"]');
  await expect(page).toHaveURL(/\/admin$/);
}

export async function createStudy(page, gym, platform = 'prolific') {
  await page.goto('/admin/studies');
  await hydrated(page);
  const form = page.locator('form.new-study');
  await form.locator('input[name="name"]').fill(`E2E ${gym} ${platform}`);
  await form.locator('input[name="slug"]').fill(platform === 'prolific' ? `e2e-${gym}` : `e2e-${gym}-${platform}`);
  await form.locator('input[name="gyms"]').fill(gym);
  await form.locator('input[name="episodes_per_worker"]').fill('1');
  await form.locator('input[name="max_turns"]').fill('2');
  await form.locator('textarea[name="consent_text"]').fill('I agree to take part in this test.');
  await form.locator('select[name="platform"]').selectOption(platform);
  await form.locator('input[name="open"]').check();
  await form.locator('button[type="submit"]').click();
  await expect(page).toHaveURL(/\/admin\/studies\/\d+$/);
  return Number(page.url().split('/').pop());
}

// Consents, begins and plays every episode on `scope` (a page or a frame locator) until "Finish" is clicked,
// choosing "ordinary conversation" where offered (else the first option) and typing `text` in every field.
// Returns the completion code shown.
export async function playEpisodes(scope, text) {
  await scope.locator('.study-consent input[type="checkbox"]').check();
  await scope.locator('.study-consent button.primary').click();
  await scope.locator('.study-instructions button.primary').click();
  for (let turn = 0; turn < 40; turn++) {
    const finish = scope.locator('button.finish');
    const form = scope.locator('form.prompt');
    await expect(finish.or(form).first()).toBeVisible({ timeout: 30_000 });
    if (await finish.isVisible()) {
      await finish.click();
      break;
    }
    const prompt = await form.getAttribute('data-prompt');
    const rows = form.locator('fieldset.buttons');
    for (let k = 0; k < (await rows.count()); k++) {
      const row = rows.nth(k);
      const chat = row.locator('button.choice', { hasText: 'ordinary conversation' });
      await ((await chat.count()) ? chat : row.locator('button.choice').first()).click();
    }
    const areas = form.locator('textarea');
    for (let k = 0; k < (await areas.count()); k++) await areas.nth(k).fill(text);
    await form.locator('button[type="submit"]').click();
    await expect(scope.locator(`form.prompt[data-prompt="${prompt}"]`)).toHaveCount(0, { timeout: 30_000 });
  }
  const code = (await scope.locator('.completion-code').textContent()).trim();
  expect(code).toMatch(/^[A-Z2-9]{12}$/);
  return code;
}
