/**
 * A failing test leaves nothing behind. A child tap process runs a test that fails on purpose
 * (tests/support/fixtures/failing-server-test.ts) with a running weaver, a running branching
 * container and a loop device in its data dir; afterwards no process, cgroup, mount or loop device
 * of that data dir or those ids may be left, and the data dir is gone.
 */
import t, { type Test } from 'tap';

type Tap = Test;
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, tempDir } from '../support/server.js';
import { cleanLeftovers, describe, isEmpty, leftovers, loopsUnder } from '../support/reap.js';
import { processesMentioning } from '../support/local-helpers.js';

const FIXTURE = join(ROOT, 'tests/support/fixtures/failing-server-test.ts');

interface Report {
  dataDir: string;
  ids: string[];
  loop?: string;
}

async function runFailing(t: Tap, mode: 'test' | 'stop'): Promise<{ code: number | null; out: string; report: Report }> {
  const reportFile = join(tempDir(), 'report.json');
  let report: Report | null = null;
  // Registered before the child starts: whatever it leaves is removed here too (and reported by
  // the assertions below).
  t.teardown(() => {
    if (report) cleanLeftovers(report.dataDir, leftovers(report.dataDir, report.ids));
  });
  const child = spawn(process.execPath, ['--import=tsx', FIXTURE], {
    cwd: ROOT,
    // The child is a plain tap run of its own (none of this runner's TAP_* settings, e.g. a grep),
    // with a timeout fit for a loaded machine (tap's default for a bare run is 30 s).
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TAP'))), LOOM_TEST_FORCE_FAIL: mode, LOOM_TEST_REPORT: reportFile, TAP_TIMEOUT: '600' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  if (!existsSync(reportFile)) throw new Error(`the child failed before starting its server (exit ${code}):\n${out.slice(-3000)}`);
  report = JSON.parse(readFileSync(reportFile, 'utf8')) as Report;
  if (report.ids.length < 2) t.comment(`the child stopped early:\n${out.slice(-3000)}`);
  return { code, out, report };
}


function assertNothingLeft(t: Tap, r: Report) {
  t.equal(r.ids.length, 2, 'the child created a weaver and a branching container');
  t.ok(r.loop, 'and a loop device');
  const left = leftovers(r.dataDir, r.ids);
  t.ok(isEmpty(left), `no process, cgroup, mount or loop device left${isEmpty(left) ? '' : `:\n${describe(left)}`}`);
  for (const id of r.ids) t.same(processesMentioning(id), [], `no process mentions ${id}`);
  t.same(loopsUnder(r.dataDir), [], 'no loop device backed by the data dir');
  t.notOk(existsSync(r.dataDir), 'the data dir is gone');
}

t.test('a test that throws with containers running: its teardown removes them through the runtime', async (t) => {
  const { code, out, report } = await runFailing(t, 'test');
  t.not(code, 0, 'the child test failed');
  t.match(out, /LOOM_TEST_FORCE_FAIL: failing on purpose/, 'because of the forced failure');
  t.match(out, /teardown removed through the runtime: .*runc container/, 'its teardown deleted the containers through runc');
  t.match(out, /teardown removed through the runtime: .*mount \S+\/rootfs/, "and unmounted the weaver's root filesystem");
  // The loop device is not a container's: the server's stop() found it, removed it and said so.
  t.match(out, /leaked by the server or test under .*loop devices: \/dev\/loop\d+/, 'the stray loop device was reported');
  // …and only it: the teardown had already removed the containers, so stop() found no process or cgroup.
  t.notMatch(out, /leaked by the server or test under [^\n]*processes: /, 'no container process was left for stop() to find');
  t.notMatch(out, /leaked by the server or test under [^\n]*cgroups: /, 'no cgroup was left for stop() to find');
  assertNothingLeft(t, report);
});

t.test('a test that stops its server with everything running: stop() cleans up and fails loudly', async (t) => {
  const { code, out, report } = await runFailing(t, 'stop');
  t.not(code, 0, 'the child test failed');
  t.match(out, /leaked by the server or test under/, 'stop() failed loudly');
  t.match(out, /processes: .*conmon/, 'naming the conmon processes');
  t.match(out, /cgroups: .*\/loom\//, 'the cgroups');
  t.match(out, /mounts: /, 'the mounts');
  t.match(out, /loop devices: /, 'and the loop device');
  t.match(out, /all of it was cleaned up now/, 'and that it cleaned them');
  assertNothingLeft(t, report);
});
