/**
 * The multifd job ring (src/ram/multifd/job-ring.ts): jobs arrive whole and
 * in order, a full ring refuses, counters wrap, waits wake when their mark
 * is written (or on interrupt), and across a real worker thread a long run
 * of jobs through a small ring loses no job and no wake-up.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { createJobRingMemory, JobRingConsumer, JobRingProducer, type RingJob } from '../src/ram/multifd/job-ring.js';

const job = (n: number, count = 3): RingJob => ({ packetNum: n, flags: n & 1, blockIndex: n % 5, count, offsets: Array.from({ length: count }, (_, i) => (n * 1000 + i) * 4096) });

test('job ring: jobs come out whole and in order; a full ring refuses; written frees slots', () => {
  const memory = createJobRingMemory(4);
  const producer = new JobRingProducer(memory);
  const consumer = new JobRingConsumer(memory);
  assert.equal(consumer.take(), undefined, 'empty');
  const marks = [0, 1, 2, 3].map((n) => producer.push(job(n, n === 3 ? 128 : 3)));
  assert.deepEqual(marks, [1, 2, 3, 4]);
  assert.equal(producer.inflight, 4);
  assert.throws(() => producer.push(job(4)), /job ring is full/);
  for (let n = 0; n < 4; n++) {
    const got = consumer.take()!;
    const want = job(n, n === 3 ? 128 : 3);
    assert.deepEqual({ packetNum: got.packetNum, flags: got.flags, blockIndex: got.blockIndex, count: got.count, offsets: [...got.offsets] }, want);
    assert.equal(got.mark, n + 1);
  }
  assert.equal(consumer.take(), undefined, 'all taken');
  assert.equal(producer.inflight, 4, 'taken is not written');
  consumer.written(2);
  assert.equal(producer.inflight, 2);
  assert.equal(producer.whenWritten(2), undefined, 'written already: no wait');
  producer.push(job(4));
  assert.equal(consumer.take()!.packetNum, 4, 'the freed slot carries the next job');
});

test('job ring: a bad depth is refused', () => {
  for (const depth of [0, 3, 6, 2048, 1.5]) assert.throws(() => createJobRingMemory(depth), /power of two/);
});

test('job ring: counters wrap at 2^31 without losing the order', () => {
  const memory = createJobRingMemory(8);
  const control = new Int32Array(memory.control);
  control[0] = control[1] = 0x7ffffffd; // pushed = written, 3 jobs before the wrap
  const producer = new JobRingProducer(memory);
  const consumer = new JobRingConsumer(memory);
  const seen: number[] = [];
  for (let n = 0; n < 20; n++) {
    const mark = producer.push(job(n));
    if (n % 3 === 2 || n === 19) {
      for (let got = consumer.take(); got; got = consumer.take()) {
        seen.push(got.packetNum);
        consumer.written(got.mark);
      }
      assert.equal(producer.inflight, 0, `all written after job ${n} (mark ${mark})`);
      assert.equal(producer.whenWritten(mark), undefined);
    }
  }
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, n) => n));
  assert.ok(producer.pushed < 0, 'the counter did wrap');
});

test('job ring: whenWritten waits for its mark; interrupt wakes it early', async () => {
  const memory = createJobRingMemory(4);
  const producer = new JobRingProducer(memory);
  const consumer = new JobRingConsumer(memory);
  producer.push(job(0));
  const mark = producer.push(job(1));
  const wait = producer.whenWritten(mark);
  assert.ok(wait, 'not written yet: a wait');
  let woke = false;
  void wait.then(() => (woke = true));
  consumer.written(consumer.take()!.mark);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(woke, false, 'job 1 of 2 written: still waiting');
  consumer.written(consumer.take()!.mark);
  await wait;
  const again = producer.whenWritten((producer.push(job(2)), producer.pushed));
  assert.ok(again);
  producer.interrupt();
  await again; // resolves although nothing was written
  assert.equal(producer.inflight, 1);
});

test('job ring across a worker thread: 20,000 jobs through 8 slots, in order, no wake-up lost', { timeout: 60_000 }, async () => {
  const memory = createJobRingMemory(8);
  const ringUrl = new URL('../src/ram/multifd/job-ring.js', import.meta.url).href;
  const jobs = 20_000;
  // The worker takes jobs as they come, checks each, and marks them written in order, some at once and some on a
  // later turn (as a socket write's callback would).
  const worker = new Worker(
    `const { workerData, parentPort } = require('node:worker_threads');
     import(workerData.ringUrl).then(async ({ JobRingConsumer }) => {
       const ring = new JobRingConsumer(workerData.memory);
       parentPort.on('message', () => {});
       let bad = 0;
       let latest = 0;
       for (let n = 0; n < workerData.jobs; ) {
         const job = ring.take();
         if (!job) { await ring.whenPushed(); continue; }
         const want = n * 1000;
         if (job.packetNum !== n || job.count !== (n % 128) + 1 || job.offsets[0] !== want * 4096 || job.offsets[job.count - 1] !== (want + job.count - 1) * 4096) bad++;
         latest = job.mark;
         n++;
         if (n % 3 === 0) setImmediate(() => ring.written(latest)); else if (n % 3 === 1) ring.written(latest);
       }
       ring.written(latest);
       setTimeout(() => { parentPort.postMessage({ bad }); process.exit(0); }, 10);
     });`,
    { eval: true, workerData: { memory, ringUrl, jobs } },
  );
  const result = new Promise<{ bad: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  try {
    const producer = new JobRingProducer(memory);
    let waits = 0;
    for (let n = 0; n < jobs; ) {
      if (producer.inflight < producer.depth) {
        producer.push(job(n, (n % 128) + 1));
        n++;
        continue;
      }
      waits++;
      await producer.whenWritten((producer.pushed - (producer.inflight >> 1)) | 0);
    }
    while (producer.inflight > 0) await producer.whenWritten(producer.pushed);
    const { bad } = await result;
    assert.equal(bad, 0, 'every job arrived whole and in order');
    assert.equal(producer.written, jobs);
    assert.ok(waits < jobs / 2, `the producer waited ${waits} times for ${jobs} jobs: one wake-up carries several`);
  } finally {
    await worker.terminate();
  }
});
