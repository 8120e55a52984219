#!/usr/bin/env node
// Compiles VendboxUSDC.sol with solc-js (pinned in package.json) through the
// standard JSON interface and writes the committed artifact VendboxUSDC.json.
//
//   node contracts/build.mjs           rebuild VendboxUSDC.json
//   node contracts/build.mjs --check   rebuild in memory; exit 1 if the committed file differs
//
// The output depends only on the source, the settings below and the compiler
// version, so a rebuild is byte-for-byte identical.

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const COMPILER_VERSION = '0.8.26';
const CONTRACT = 'VendboxUSDC';
const SOURCE_NAME = `${CONTRACT}.sol`;
const EVM_VERSION = 'cancun';
const OPTIMIZER = { enabled: true, runs: 200 };

const here = dirname(fileURLToPath(import.meta.url));
const sourcePath = join(here, SOURCE_NAME);
const artifactPath = join(here, `${CONTRACT}.json`);

function fail(message) {
  console.error(`build.mjs: ${message}`);
  process.exit(1);
}

const args = process.argv.slice(2);
const unknown = args.filter((a) => a !== '--check');
if (unknown.length > 0) {
  fail(`unknown argument(s): ${unknown.join(' ')} (usage: build.mjs [--check])`);
}
const check = args.includes('--check');

const loaded = solc.version();
if (!loaded.startsWith(`${COMPILER_VERSION}+`)) {
  fail(`expected solc ${COMPILER_VERSION}, found ${loaded}; run: npm install --prefix contracts`);
}

const source = readFileSync(sourcePath, 'utf8');
const input = {
  language: 'Solidity',
  sources: { [SOURCE_NAME]: { content: source } },
  settings: {
    optimizer: OPTIMIZER,
    evmVersion: EVM_VERSION,
    outputSelection: { [SOURCE_NAME]: { [CONTRACT]: ['abi', 'evm.bytecode.object'] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const diagnostics = output.errors ?? [];
for (const d of diagnostics) {
  console.error(d.formattedMessage ?? d.message);
}
if (diagnostics.some((d) => d.severity === 'error')) {
  fail('compilation failed');
}

const compiled = output.contracts?.[SOURCE_NAME]?.[CONTRACT];
if (!compiled || !compiled.evm?.bytecode?.object) {
  fail(`no bytecode for ${CONTRACT} in the compiler output`);
}

const artifact = {
  contractName: CONTRACT,
  compiler: `solc-${COMPILER_VERSION}`,
  evmVersion: EVM_VERSION,
  optimizer: OPTIMIZER,
  sourceSha256: createHash('sha256').update(readFileSync(sourcePath)).digest('hex'),
  abi: compiled.abi,
  bytecode: `0x${compiled.evm.bytecode.object}`,
};
const text = `${JSON.stringify(artifact, null, 2)}\n`;

if (check) {
  if (!existsSync(artifactPath)) {
    fail(`${CONTRACT}.json is missing; run contracts/build.sh`);
  }
  if (readFileSync(artifactPath, 'utf8') !== text) {
    fail(`${CONTRACT}.json is out of date with ${SOURCE_NAME}; run contracts/build.sh and commit the result`);
  }
  console.log(`${CONTRACT}.json is up to date`);
} else {
  writeFileSync(artifactPath, text);
  console.log(`wrote ${CONTRACT}.json (${(artifact.bytecode.length - 2) / 2} bytes of creation code)`);
}
