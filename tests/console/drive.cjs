// Drives the fleet console (/ui) in headless Chromium: load a model, unload
// it, stream an answer in the playground. Prints one JSON line of what it
// saw; screenshots go to $SHOTS. Run by tests/console.rs.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const base = process.env.BASE;
const shots = process.env.SHOTS;
const model = process.env.MODEL;
const seen = {};

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const failed = [];
    page.on("requestfailed", (r) => failed.push(r.url()));
    await page.goto(base + "/ui");
    const row = page.locator(`#models tr[data-model="${model}"]`);
    await row.waitFor({ timeout: 15000 });
    seen.neurons = await page.locator("#neurons tbody tr").count();
    seen.memory_bar = await page.locator("#neurons .bar").count();
    seen.before = (await row.locator("td").nth(1).innerText()).trim();

    await row.locator('button[data-verb="load"]').click();
    await row.locator(".state-ready").first().waitFor({ timeout: 30000 });
    seen.loaded = (await row.locator("td").nth(1).innerText()).trim();
    seen.slots = (await row.locator("td").nth(2).innerText()).trim();
    await page.screenshot({ path: shots + "/1-loaded.png", fullPage: true });

    await row.locator('button[data-verb="unload"]').click();
    await row.locator("text=not loaded").waitFor({ timeout: 30000 });
    seen.unloaded = (await row.locator("td").nth(1).innerText()).trim();
    await page.screenshot({ path: shots + "/2-unloaded.png", fullPage: true });

    // The playground streams from a model no neuron holds now: a cold load.
    await page.selectOption("#model", model);
    await page.fill("#prompt", "Say something.");
    await page.click("#send");
    await page.locator('#answer[data-done="true"]').waitFor({ timeout: 60000 });
    seen.answer = await page.locator("#answer").innerText();
    seen.progress = await page.locator("#progress").innerText();
    seen.recent = await page.locator("#recent tbody tr").count();
    await page.waitForTimeout(2500); // one refresh: the recent request is listed
    seen.recent = await page.locator("#recent tbody tr").count();
    seen.recent_first = (await page.locator("#recent tbody tr").first().innerText()).replace(/\s+/g, " ");
    seen.error = await page.locator("#error").innerText();
    seen.failed_requests = failed;
    await page.screenshot({ path: shots + "/3-answer.png", fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
}

main().catch((e) => {
  console.log(JSON.stringify({ ...seen, failure: String(e) }));
  process.exit(1);
});
