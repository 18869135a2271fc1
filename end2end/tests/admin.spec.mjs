// Admin sign-in in a real Chromium: the admin page sends a visitor to the login page, a wrong password is
// refused, the right one signs in (an HttpOnly, SameSite=Strict session cookie the page's scripts cannot read),
// server functions called by the hydrated page carry the CSRF token, and signing out ends the session.
import { test, expect } from '@playwright/test';

const RUN = process.env.E2E_RUN_ID;
const PASSWORD = process.env.E2E_ADMIN_PASSWORD;

async function hydrated(page) {
  await expect(page.locator('main[data-hydrated="true"]')).toBeAttached({ timeout: 30_000 });
}

test('an admin signs in through the page, sees the admin page and signs out', async ({ page, context }) => {
  expect(PASSWORD, 'scripts/e2e sets E2E_ADMIN_PASSWORD').toBeTruthy();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  await page.goto('/admin');
  await expect(page).toHaveURL(/\/admin\/login\?next=%2Fadmin|\/admin\/login\?next=\/admin/);
  await hydrated(page);
  await page.fill('form.auth-form input[name="password"]', 'not the password');
  await page.click('form.auth-form button[type="submit"]');
  await expect(page.locator('p.error')).toHaveText('Wrong password.');
  expect((await context.cookies()).some((c) => c.name === 'userrl_session')).toBe(false);

  await hydrated(page);
  await page.fill('form.auth-form input[name="password"]', PASSWORD);
  await page.click('form.auth-form button[type="submit"]');
  await expect(page).toHaveURL(/\/admin$/);
  await expect(page.locator('.signed-in')).toBeVisible();
  const session = (await context.cookies()).find((c) => c.name === 'userrl_session');
  expect(session).toBeTruthy();
  expect(session.httpOnly).toBe(true);
  expect(session.sameSite).toBe('Strict');
  expect(await page.evaluate(() => document.cookie)).not.toContain('userrl_session');

  // Client-side navigation: the runs page loads through a server function (a POST with the CSRF header).
  await hydrated(page);
  await page.click('nav.top a[href="/"]');
  await expect(page.locator(`tr.run[data-run-id="${RUN}"]`)).toBeVisible();

  // A POST without the token is refused, even with the session cookie.
  const refused = await page.evaluate(async () => {
    const res = await window.fetch.call(window, '/api/fn/list_runs', {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-csrf-token': 'forged' }, body: '{}',
    });
    return res.status;
  });
  expect(refused).toBe(403);

  await page.goto('/admin');
  await hydrated(page);
  await page.click('form.auth-form button:has-text("Sign out")');
  await expect(page).toHaveURL(/\/$/);
  expect((await context.cookies()).some((c) => c.name === 'userrl_session')).toBe(false);
  await page.goto('/admin');
  await expect(page).toHaveURL(/\/admin\/login/);
  expect(errors).toEqual([]);
});
