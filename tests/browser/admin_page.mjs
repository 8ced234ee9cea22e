// Drives imagegate's /admin/ page in a real headless chromium: sign in, filter the trail, open a
// record (with its retained image), approve a flagged image. Exits non-zero with a reason on failure.
// Usage: node admin_page.mjs BASE_URL ADMIN_KEY FLAGGED_AUDIT_ID
import { chromium } from "playwright-core";

const [base, key, flaggedId] = process.argv.slice(2);
const executablePath = process.env.IMAGEGATE_CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
});
const step = (name) => console.log(`step: ${name}`);
// Polls from node with page.evaluate: Playwright's waitForFunction evaluates strings in the page,
// which the admin page's Content-Security-Policy (rightly) forbids.
async function until(page, predicate, arg, what) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if (await page.evaluate(predicate, arg)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}
const failures = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
  page.on("console", (message) => { if (message.type() === "error") failures.push(`console error: ${message.text()}`); });

  step("sign in");
  await page.goto(`${base}/admin/`);
  await page.fill("#key", key);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#record-table tbody tr");
  const all = await page.locator("#record-table tbody tr").count();
  if (all < 3) throw new Error(`expected at least 3 records after sign-in, saw ${all}`);
  if (await page.evaluate(() => sessionStorage.getItem("imagegate.adminKey")) !== key) throw new Error("key not kept in sessionStorage");

  step("filter by decision=flag");
  await page.selectOption("select[name=decision]", "flag");
  await page.click("#search");
  await until(page, (id) => {
    const rows = document.querySelectorAll("#record-table tbody tr");
    return rows.length === 1 && rows[0].dataset.id === id;
  }, flaggedId, "only the flagged record listed");

  step("filter by user (no match)");
  await page.fill("input[name=user]", "nobody");
  await page.click("#search");
  await until(page, () => document.querySelectorAll("#record-table tbody tr").length === 0, null, "an empty result");
  await page.fill("input[name=user]", "");
  await page.click("#search");
  await page.waitForSelector(`#record-table tbody tr[data-id="${flaggedId}"]`);

  step("open the record");
  await page.click(`#record-table tbody tr[data-id="${flaggedId}"]`);
  await page.waitForSelector("#detail:not([hidden])");
  const shownId = await page.textContent("#detail-id");
  if (shownId !== flaggedId) throw new Error(`detail shows ${shownId}, expected ${flaggedId}`);
  const prompt = await page.textContent('#detail-fields dd[data-field="prompt"]');
  if (!prompt.includes("flagme")) throw new Error(`prompt not shown: ${prompt}`);
  const verdicts = await page.textContent("#detail-decisions");
  if (!verdicts.includes("flag") || !verdicts.includes("violence")) throw new Error("the flag decision is not shown");
  await until(page, () => {
    const image = document.querySelector("#detail-images img");
    return Boolean(image && image.complete && image.naturalWidth > 0);
  }, null, "the record's retained image");

  step("approve the flagged image in the review queue");
  await page.click('#tabs button[data-tab="review"]');
  const card = page.locator(".review-card").first();
  await card.waitFor();
  await until(page, () => {
    const image = document.querySelector(".review-card img");
    return Boolean(image && image.complete && image.naturalWidth > 0);
  }, null, "the flagged image in the queue");
  await card.locator("textarea").fill("reviewed in the browser test");
  await card.locator("button.approve").click();
  await page.waitForSelector("#review-empty");
  await page.selectOption("#review-status", "approved");
  await page.locator(".review-card .status", { hasText: "approved" }).waitFor();

  if (failures.length) throw new Error(failures.join("; "));
  console.log("ok");
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
