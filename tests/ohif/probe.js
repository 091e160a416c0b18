// Drives OHIF (prebuilt @ohif/app) in Debian's chromium through puppeteer-core, the way a
// radiologist opens results: open the study, double-click each SEG thumbnail and accept
// OHIF's prompt, then read back what OHIF holds (its labelmap voxels per referenced CT
// slice and segment, and the segment volumes OHIF computes), open the PDF, the summary and
// the overlay series, and keep screenshots. Prints one JSON document on stdout.
//
// Usage: node probe.js '<json>' with keys url, chromium, userDataDir, shots, study,
//        segs: [{series, number, name, jumpTo (a segment label)}], documents: [{series, number, name, kind}], timeoutMs,
//        mode (OHIF mode route, default 'segmentation').
'use strict';
const puppeteer = require('puppeteer-core');

const args = JSON.parse(process.argv[2]);
const log = (...a) => process.stderr.write(`[probe ${new Date().toISOString()}] ${a.join(' ')}\n`);

async function waitFor(page, fn, arg, what, timeoutMs) {
  try {
    return await page.waitForFunction(fn, { timeout: timeoutMs, polling: 250 }, arg);
  } catch (err) {
    throw new Error(`timed out waiting for ${what}: ${err.message}`);
  }
}

async function thumbnail(page, seriesNumber, timeoutMs) {
  const selector = `[data-series="${seriesNumber}"]`;
  await page.waitForSelector(selector, { timeout: timeoutMs });
  return selector;
}

async function clickButton(page, text, timeoutMs) {
  await waitFor(page, t => [...document.querySelectorAll('button')]
    .some(b => b.textContent.trim() === t && b.offsetParent !== null), text,
    `a "${text}" button`, timeoutMs);
  await page.evaluate(t => {
    const button = [...document.querySelectorAll('button')]
      .find(b => b.textContent.trim() === t && b.offsetParent !== null);
    button.click();
  }, text);
}

// OHIF 3.13 starts a guided tour on first use; a radiologist clicks "Skip all".
async function skipTour(page) {
  for (let i = 0; i < 20; i++) {
    const skipped = await page.evaluate(() => {
      const button = [...document.querySelectorAll('button, a, span, div')]
        .find(b => b.childElementCount === 0 && b.textContent.trim() === 'Skip all');
      if (button) { button.click(); return true; }
      return false;
    });
    if (skipped) { log('tour skipped'); return; }
    await new Promise(r => setTimeout(r, 250));
  }
}

async function readSeg(page, seriesUid, timeoutMs) {
  // Wait until OHIF has parsed the SEG and built its labelmap.
  await waitFor(page, uid => {
    const ds = window.services.displaySetService.getActiveDisplaySets()
      .find(d => d.SeriesInstanceUID === uid);
    if (!ds || !ds.labelMapImages || !ds.labelMapImages.length) return false;
    return !!window.services.segmentationService.getSegmentation(ds.displaySetInstanceUID);
  }, seriesUid, `OHIF's labelmap of SEG ${seriesUid}`, timeoutMs);
  // OHIF computes segment statistics (volume among them) with cornerstone's getStatistics
  // when a segmentation's data changes (its SEGMENTATION_DATA_MODIFIED handler); loading a SEG
  // does not fire it, so fire it once, as an edit would, and wait for OHIF's volumes.
  await page.evaluate(uid => {
    const s = window.services.segmentationService;
    const ds = window.services.displaySetService.getActiveDisplaySets()
      .find(d => d.SeriesInstanceUID === uid);
    s._broadcastEvent(s.EVENTS.SEGMENTATION_DATA_MODIFIED,
      { segmentationId: ds.displaySetInstanceUID });
  }, seriesUid);
  let volumesReady = true;
  try {
    await waitFor(page, uid => {
      const ds = window.services.displaySetService.getActiveDisplaySets()
        .find(d => d.SeriesInstanceUID === uid);
      const seg = window.services.segmentationService.getSegmentation(ds.displaySetInstanceUID);
      const segments = Object.values(seg.segments || {}).filter(s => s && s.segmentIndex > 0);
      return segments.length > 0 &&
        segments.every(s => s.cachedStats && s.cachedStats.namedStats && s.cachedStats.namedStats.volume);
    }, seriesUid, `OHIF's segment volumes of SEG ${seriesUid}`, timeoutMs);
  } catch (err) {
    log(err.message);
    volumesReady = false;
  }
  return await page.evaluate((uid, volumesReady) => {
    const ds = window.services.displaySetService.getActiveDisplaySets()
      .find(d => d.SeriesInstanceUID === uid);
    const layers = ds.labelMapImages;
    const slices = {};
    layers.forEach(layer => layer.forEach(image => {
      const match = /instances\/([0-9.]+)/.exec(image.referencedImageId || '');
      const sop = match ? match[1] : image.referencedImageId;
      const data = image.voxelManager.getScalarData();
      const counts = slices[sop] || {};
      for (let i = 0; i < data.length; i++) {
        const v = data[i];
        if (v) counts[v] = (counts[v] || 0) + 1;
      }
      slices[sop] = counts;
    }));
    const seg = window.services.segmentationService.getSegmentation(ds.displaySetInstanceUID);
    const segments = {};
    Object.values(seg.segments || {}).forEach(s => {
      if (!s || !s.segmentIndex) return;
      const volume = s.cachedStats && s.cachedStats.namedStats && s.cachedStats.namedStats.volume;
      segments[s.segmentIndex] = {
        label: s.label,
        volume: volume ? volume.value : null,
        unit: volume ? volume.unit : null,
      };
    });
    return {
      layers: layers.length,
      framesPerLayer: layers.map(l => l.length),
      slices,
      segments,
      volumesReady,
    };
  }, seriesUid, volumesReady);
}

async function main() {
  const timeoutMs = args.timeoutMs || 90000;
  const browser = await puppeteer.launch({
    executablePath: args.chromium,
    headless: true,
    userDataDir: args.userDataDir,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--window-size=1600,1000'],
    defaultViewport: { width: 1600, height: 1000 },
  });
  const result = { segs: {}, documents: {}, errors: [], console: [] };
  try {
    const page = await browser.newPage();
    page.on('console', m => {
      if (m.type() === 'error') result.console.push(m.text());
      if (process.env.PROBE_DEBUG) log('console', m.type(), m.text());
    });
    page.on('pageerror', e => result.console.push(`pageerror: ${e.message}`));
    // OHIF's segmentation mode: where a radiologist reviews SEGs and OHIF shows segment statistics.
    const url = `${args.url}/${args.mode || 'segmentation'}?StudyInstanceUIDs=${args.study}`;
    log('open', url);
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
    await waitFor(page, () => window.services && window.services.displaySetService &&
      window.services.displaySetService.getActiveDisplaySets().length > 0, null,
      'OHIF display sets', timeoutMs);
    await page.waitForSelector('canvas', { timeout: timeoutMs });
    await skipTour(page);
    await new Promise(r => setTimeout(r, 1500));
    await page.screenshot({ path: `${args.shots}/study.png` });
    result.displaySets = await page.evaluate(() => window.services.displaySetService
      .getActiveDisplaySets().map(d => ({ series: d.SeriesInstanceUID, modality: d.Modality,
        description: d.SeriesDescription, number: d.SeriesNumber, unsupported: !!d.unsupported })));

    for (const seg of args.segs) {
      try {
        log('SEG', seg.name);
        const selector = await thumbnail(page, seg.number, timeoutMs);
        await page.click(selector, { count: 2 });
        await clickButton(page, 'Yes', timeoutMs);
        result.segs[seg.name] = await readSeg(page, seg.series, timeoutMs);
        if (seg.jumpTo) {
          // a click on a segment in OHIF's segmentation panel jumps to that segment's centre
          await page.evaluate(label => {
            const row = [...document.querySelectorAll('span, div')]
              .find(e => e.childElementCount === 0 && e.textContent.trim() === label);
            if (row) row.click();
          }, seg.jumpTo);
        }
        await new Promise(r => setTimeout(r, 1500));
        await page.screenshot({ path: `${args.shots}/seg_${seg.name}.png` });
      } catch (err) {
        result.errors.push(`SEG ${seg.name}: ${err.message}`);
        await page.screenshot({ path: `${args.shots}/seg_${seg.name}_failed.png` }).catch(() => {});
      }
    }

    // The report, the summary and the overlay open in OHIF's basic viewer (the mode for
    // reading; the segmentation mode does not list the PDF viewer).
    const viewerUrl = `${args.url}/viewer?StudyInstanceUIDs=${args.study}`;
    log('open', viewerUrl);
    await page.goto(viewerUrl, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
    await waitFor(page, () => window.services && window.services.displaySetService &&
      window.services.displaySetService.getActiveDisplaySets().length > 0, null,
      'OHIF display sets (viewer mode)', timeoutMs);
    await skipTour(page);
    for (const doc of args.documents) {
      try {
        log('document', doc.name);
        const selector = await thumbnail(page, doc.number, timeoutMs);
        await page.click(selector, { count: 2 });
        const shown = await waitFor(page, uid => {
          const ds = window.services.displaySetService.getActiveDisplaySets()
            .find(d => d.SeriesInstanceUID === uid);
          if (!ds) return false;
          const state = window.services.viewportGridService.getState();
          const viewports = [...state.viewports.values()];
          return viewports.some(v => (v.displaySetInstanceUIDs || []).includes(ds.displaySetInstanceUID))
            && ds.displaySetInstanceUID;
        }, doc.series, `${doc.name} in a viewport`, timeoutMs);
        const info = { displaySetInstanceUID: await shown.jsonValue() };
        if (doc.kind === 'pdf') {
          await waitFor(page, () => document.querySelector('object, embed, iframe'), null,
            'the PDF viewer element', timeoutMs);
          info.pdf = await page.evaluate(async () => {
            const el = document.querySelector('object, embed, iframe');
            const src = el.data || el.src;
            const answer = await fetch(src);
            const bytes = new Uint8Array(await answer.arrayBuffer());
            return { element: el.tagName.toLowerCase(), src: String(src).slice(0, 80),
              type: el.type || null, magic: String.fromCharCode(...bytes.slice(0, 5)),
              length: bytes.length };
          });
        } else {
          await new Promise(r => setTimeout(r, 2500));
          if (doc.scroll) {
            // scroll the way a reader does (mouse wheel over the viewport) to a lung slice
            const box = await (await page.$('canvas')).boundingBox();
            await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
            for (let i = 0; i < doc.scroll; i++) {
              await page.mouse.wheel({ deltaY: 100 });
              await new Promise(r => setTimeout(r, 30));
            }
            await new Promise(r => setTimeout(r, 1500));
          }
          info.viewportImage = await page.evaluate(uid => {
            const ds = window.services.displaySetService.getActiveDisplaySets()
              .find(d => d.SeriesInstanceUID === uid);
            return { images: (ds.images || ds.instances || []).length };
          }, doc.series);
        }
        await new Promise(r => setTimeout(r, 1000));
        await page.screenshot({ path: `${args.shots}/${doc.name}.png` });
        result.documents[doc.name] = info;
      } catch (err) {
        result.errors.push(`${doc.name}: ${err.message}`);
        await page.screenshot({ path: `${args.shots}/${doc.name}_failed.png` }).catch(() => {});
      }
    }
  } finally {
    await browser.close();
  }
  const fs = require('fs');
  fs.writeFileSync(`${args.shots}/result.json`, JSON.stringify(result, null, 1));
  process.stdout.write(JSON.stringify(result));
}

main().catch(err => {
  process.stderr.write(`probe failed: ${err.stack || err}\n`);
  process.exit(2);
});
