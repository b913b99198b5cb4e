// Drives the dashboard as an operator would, for tests/health.rs: log in, read an account's
// chart, find an excluded contact by name, retry a failed push, open a contact's story.
// Prints one JSON object with what it read; screenshots go to OUT_DIR.
//
// usage: node health.mjs BASE OPERATOR_TOKEN OUT_DIR ACCOUNT SKIPPED_NAME FAILING_NAME STORY_QUERY
import { chromium } from "playwright-core";

const [base, token, outDir, account, skippedName, failingName, storyQuery] =
  process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ],
});
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1200 } });

  // Log in with the operator token.
  const first = await page.goto(`${base}/`);
  out.before_login_status = first.status();
  await page.goto(`${base}/login`);
  await page.fill("input[name=token]", token);
  await Promise.all([page.waitForURL(`${base}/`), page.click("form#login button")]);
  out.logged_in = (await page.locator("form[action='/logout']").count()) === 1;

  // The account's chart: every bar's title, and the days marked unusual.
  const section = page.locator(`section.account-health[data-account="${account}"]`);
  out.bars = await section.locator("svg.chart rect > title").allTextContents();
  out.unusual = await section.locator("svg.chart rect.unusual > title").allTextContents();
  out.unusual_labels = await section.locator("svg.chart text[font-weight=bold]").allTextContents();
  await page.screenshot({ path: `${outDir}/health-dashboard.png`, fullPage: true });

  // Find an excluded contact by name from the account's health page.
  await Promise.all([page.waitForLoadState(), section.locator("a", { hasText: "Excluded" }).click()]);
  await page.fill("input[name=q]", skippedName);
  await Promise.all([page.waitForLoadState(), page.locator("button", { hasText: "Search" }).click()]);
  out.excluded = await page.locator("table.excluded td.reason").allTextContents();
  await page.screenshot({ path: `${outDir}/health-excluded.png`, fullPage: true });

  // Retry a failed push.
  await page.goto(`${base}/accounts/${encodeURIComponent(account)}/health`);
  const row = page.locator("table.failing tr", { hasText: failingName });
  out.failing_before = await row.count();
  await page.screenshot({ path: `${outDir}/health-failing.png`, fullPage: true });
  await Promise.all([page.waitForLoadState(), row.locator("button", { hasText: "Retry" }).click()]);
  out.after_retry_url = page.url();

  // Open a contact's story from the dashboard's search box.
  await page.goto(`${base}/`);
  await page.fill("form.search input[name=q]", storyQuery);
  await Promise.all([page.waitForLoadState(), page.locator("form.search button").click()]);
  await Promise.all([page.waitForLoadState(), page.locator("ul.found li a").first().click()]);
  out.story_title = await page.locator("h1").textContent();
  out.story_seqs = await page.locator("table.story tr[data-seq]").evaluateAll((rows) =>
    rows.map((r) => Number(r.getAttribute("data-seq"))),
  );
  out.story_actions = await page.locator("table.story tr[data-seq] td:nth-child(2) b").allTextContents();
  await page.screenshot({ path: `${outDir}/health-story.png`, fullPage: true });
} catch (e) {
  out.error = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
