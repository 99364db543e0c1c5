// kafkajs driver for the test suite: reads one JSON command on stdin, prints one JSON
// result line on stdout. Commands: produce, consume, admin, cluster.
'use strict';
const { Kafka, CompressionTypes, logLevel } = require('kafkajs');

const CODECS = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP };

async function main() {
  const input = await new Promise((resolve) => {
    let data = '';
    process.stdin.on('data', (c) => (data += c));
    process.stdin.on('end', () => resolve(data));
  });
  const cmd = JSON.parse(input);
  const kafka = new Kafka({
    clientId: 'causeway-tests',
    brokers: cmd.brokers,
    logLevel: logLevel.ERROR,
    retry: { retries: 8 },
    // Optional: { mechanism: 'scram-sha-256' | 'scram-sha-512' | 'plain', username, password }.
    sasl: cmd.sasl,
    // Optional: a CA file for TLS.
    ssl: cmd.sslCa ? { ca: [require('fs').readFileSync(cmd.sslCa, 'utf-8')] } : undefined,
  });
  let result;
  if (cmd.op === 'produce') {
    const producer = kafka.producer({ idempotent: !!cmd.idempotent, maxInFlightRequests: cmd.idempotent ? 1 : undefined });
    await producer.connect();
    const meta = await producer.send({
      topic: cmd.topic,
      compression: CODECS[cmd.codec || 'none'],
      acks: -1,
      messages: cmd.records.map((r) => ({ key: r.key, value: r.value, headers: r.headers, partition: cmd.partition })),
    });
    await producer.disconnect();
    result = { sent: cmd.records.length, meta };
  } else if (cmd.op === 'consume') {
    const consumer = kafka.consumer({ groupId: cmd.group || `kafkajs-${cmd.topic}-${Date.now()}`, sessionTimeout: 10000, rebalanceTimeout: 10000 });
    await consumer.connect();
    await consumer.subscribe({ topic: cmd.topic, fromBeginning: true });
    const messages = [];
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${messages.length} of ${cmd.count} messages`)), (cmd.timeoutMs || 45000));
      consumer.run({
        autoCommit: !!cmd.commit,
        eachMessage: async ({ partition, message }) => {
          if (cmd.partition !== undefined && partition !== cmd.partition) return;
          const headers = Object.entries(message.headers || {}).map(([k, v]) => [k, v.toString()]);
          messages.push({ offset: message.offset, key: message.key ? message.key.toString() : null, value: message.value.toString(), headers });
          if (messages.length >= cmd.count) { clearTimeout(timer); resolve(); }
        },
      }).catch(reject);
    });
    await consumer.disconnect();
    result = { messages };
  } else if (cmd.op === 'admin') {
    const admin = kafka.admin();
    await admin.connect();
    const created = await admin.createTopics({ topics: [{ topic: cmd.topic, numPartitions: cmd.partitions }], waitForLeaders: true });
    const listed = await admin.listTopics();
    const meta = await admin.fetchTopicMetadata({ topics: [cmd.topic] });
    const offsets = await admin.fetchTopicOffsets(cmd.topic);
    await admin.deleteTopics({ topics: [cmd.topic] });
    const after = await admin.listTopics();
    await admin.disconnect();
    result = { created, listed, partitions: meta.topics[0].partitions.length, offsets, after };
  } else if (cmd.op === 'cluster') {
    const admin = kafka.admin();
    await admin.connect();
    const cluster = await admin.describeCluster();
    await admin.disconnect();
    result = cluster;
  } else {
    throw new Error(`unknown op ${cmd.op}`);
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
