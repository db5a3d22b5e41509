// Reads an MCAP file the way Foxglove does and decodes every ROS 2 message in it.
//
//   node decode.mjs <file.mcap>
//
// Each channel's schema is parsed with @foxglove/rosmsg (ROS 2 mode) and each of its messages is
// decoded with @foxglove/rosmsg2-serialization's MessageReader; chunks are decompressed with the
// handlers of @mcap/support. Prints one JSON object:
//   {"file": ..., "topics": {"/topic": {"schema": ..., "schema_encoding": ...,
//     "message_encoding": ..., "messages": <decoded>, "expected": <from the summary>,
//     "skipped": <reason, absent when read>, "error": <first failure, absent when none>}}}
// and exits 1 when a schema did not parse or a message did not decode (or left bytes unread),
// 2 when the file itself could not be read. Channels whose schema is not ros2msg are skipped.
import { open } from "node:fs/promises";

import { parse } from "@foxglove/rosmsg";
import { MessageReader } from "@foxglove/rosmsg2-serialization";
import { McapIndexedReader } from "@mcap/core";
import { loadDecompressHandlers } from "@mcap/support";

function fileReadable(handle, size) {
  return {
    size: async () => BigInt(size),
    read: async (offset, length) => {
      const buffer = new Uint8Array(Number(length));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, Number(offset));
      if (bytesRead !== buffer.length) {
        throw new Error(`short read: ${bytesRead} of ${buffer.length} bytes at ${offset}`);
      }
      return buffer;
    },
  };
}

function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

async function main(path) {
  const handle = await open(path, "r");
  try {
    const { size } = await handle.stat();
    const reader = await McapIndexedReader.Initialize({
      readable: fileReadable(handle, size),
      decompressHandlers: await loadDecompressHandlers(),
    });
    const expected = reader.statistics?.channelMessageCounts ?? new Map();
    const topics = {};
    const readers = new Map();
    for (const [id, channel] of reader.channelsById) {
      const schema = reader.schemasById.get(channel.schemaId);
      const entry = {
        schema: schema?.name ?? null,
        schema_encoding: schema?.encoding ?? null,
        message_encoding: channel.messageEncoding,
        messages: 0,
        expected: Number(expected.get(id) ?? 0),
      };
      topics[channel.topic] = entry;
      if (schema?.encoding !== "ros2msg" || channel.messageEncoding !== "cdr") {
        entry.skipped = `schema encoding ${entry.schema_encoding}, `
          + `message encoding ${entry.message_encoding}`;
        continue;
      }
      try {
        const text = new TextDecoder().decode(schema.data);
        readers.set(id, new MessageReader(parse(text, { ros2: true })));
      } catch (error) {
        entry.error = `schema ${schema.name}: ${describe(error)}`;
      }
    }
    for await (const message of reader.readMessages({ validateCrcs: true })) {
      const messageReader = readers.get(message.channelId);
      const entry = topics[reader.channelsById.get(message.channelId).topic];
      if (messageReader === undefined || entry.error !== undefined) {
        continue;
      }
      try {
        messageReader.readMessage(message.data);
        if (messageReader.lastReadHadTrailingBytes()) {
          throw new Error(`${message.data.byteLength - messageReader.lastReadByteLength()} `
            + `of ${message.data.byteLength} bytes left unread`);
        }
        entry.messages += 1;
      } catch (error) {
        entry.error = `message at log time ${message.logTime}: ${describe(error)}`;
      }
    }
    for (const entry of Object.values(topics)) {
      if (entry.skipped === undefined && entry.error === undefined
          && entry.messages !== entry.expected) {
        entry.error = `decoded ${entry.messages} messages, the summary counts ${entry.expected}`;
      }
    }
    const failed = Object.values(topics).some((entry) => entry.error !== undefined);
    console.log(JSON.stringify({ file: path, topics }, null, 2));
    return failed ? 1 : 0;
  } finally {
    await handle.close();
  }
}

if (process.argv.length !== 3) {
  console.error("usage: node decode.mjs <file.mcap>");
  process.exit(2);
}
main(process.argv[2]).then(
  (code) => { process.exitCode = code; },
  (error) => {
    console.error(`cannot read ${process.argv[2]}: ${error?.stack ?? error}`);
    process.exitCode = 2;
  },
);
