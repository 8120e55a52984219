#!/usr/bin/env node
// Compiles each contract (VendboxUSDC.sol, VendboxMulticall.sol) with solc-js (pinned in
// package.json) through the standard JSON interface and writes its committed artifact
// (VendboxUSDC.json, VendboxMulticall.json).
//
//   node contracts/build.mjs           rebuild the artifacts
//   node contracts/build.mjs --check   rebuild in memory; exit 1 if a committed file differs
//
// The output depends only on the source, the settings below and the compiler
// version, so a rebuild is byte-for-byte identical.

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const COMPILER_VERSION = '0.8.26';
const EVM_VERSION = 'cancun';
const OPTIMIZER = { enabled: true, runs: 200 };
// Each contract, and whether its artifact also carries the runtime code (what `anvil_setCode`
// puts at an address: the multicall is placed at Multicall3's canonical address that way).
const CONTRACTS = [
  { name: 'VendboxUSDC', runtime: false },
  { name: 'VendboxMulticall', runtime: true },
];

const here = dirname(fileURLToPath(import.meta.url));

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

let stale = false;
for (const { name, runtime } of CONTRACTS) {
  const sourceName = `${name}.sol`;
  const sourcePath = join(here, sourceName);
  const artifactPath = join(here, `${name}.json`);
  const source = readFileSync(sourcePath, 'utf8');
  const selection = ['abi', 'evm.bytecode.object'].concat(runtime ? ['evm.deployedBytecode.object'] : []);
  const input = {
    language: 'Solidity',
    sources: { [sourceName]: { content: source } },
    settings: {
      optimizer: OPTIMIZER,
      evmVersion: EVM_VERSION,
      outputSelection: { [sourceName]: { [name]: selection } },
    },
  };

  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const diagnostics = output.errors ?? [];
  for (const d of diagnostics) {
    console.error(d.formattedMessage ?? d.message);
  }
  if (diagnostics.some((d) => d.severity === 'error')) {
    fail(`compilation of ${sourceName} failed`);
  }

  const compiled = output.contracts?.[sourceName]?.[name];
  if (!compiled || !compiled.evm?.bytecode?.object) {
    fail(`no bytecode for ${name} in the compiler output`);
  }

  const artifact = {
    contractName: name,
    compiler: `solc-${COMPILER_VERSION}`,
    evmVersion: EVM_VERSION,
    optimizer: OPTIMIZER,
    sourceSha256: createHash('sha256').update(readFileSync(sourcePath)).digest('hex'),
    abi: compiled.abi,
    bytecode: `0x${compiled.evm.bytecode.object}`,
  };
  if (runtime) {
    artifact.deployedBytecode = `0x${compiled.evm.deployedBytecode.object}`;
  }
  const text = `${JSON.stringify(artifact, null, 2)}\n`;

  if (check) {
    if (!existsSync(artifactPath)) {
      console.error(`build.mjs: ${name}.json is missing; run contracts/build.sh`);
      stale = true;
    } else if (readFileSync(artifactPath, 'utf8') !== text) {
      console.error(`build.mjs: ${name}.json is out of date with ${sourceName}; run contracts/build.sh and commit the result`);
      stale = true;
    } else {
      console.log(`${name}.json is up to date`);
    }
  } else {
    writeFileSync(artifactPath, text);
    console.log(`wrote ${name}.json (${(artifact.bytecode.length - 2) / 2} bytes of creation code)`);
  }
}
if (stale) {
  process.exit(1);
}
