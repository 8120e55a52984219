#!/usr/bin/env python3
"""End-to-end check of the committed VendboxUSDC artifact on a live dev chain.

Usage:
    python3 contracts/check_token.py [RPC_URL]        # default http://127.0.0.1:8545

The node must be an anvil-like dev chain: the script sends transactions from
its first two unlocked accounts (deployer and relayer) and, if the node answers
anvil_setCode, also checks ERC-1271 contract signers. It deploys a fresh token
with domain ("USDC", "2"), exercises EIP-3009 and exits non-zero on the first
failed check. It starts and stops no process.

Needs: pip install web3 eth-account
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

HERE = Path(__file__).resolve().parent
ARTIFACT = HERE / "VendboxUSDC.json"
SOURCE = HERE / "VendboxUSDC.sol"
DEFAULT_RPC = "http://127.0.0.1:8545"

DOMAIN_NAME = "USDC"
DOMAIN_VERSION = "2"
ONE_USDC = 1_000_000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

SIG_VRS = "(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
SIG_BYTES = "(address,address,uint256,uint256,uint256,bytes32,bytes)"

AUTH_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]

# Minimal ERC-1271 wallets (runtime code only, installed with anvil_setCode):
# one answers every call with the magic value 0x1626ba7e, the other with zero.
WALLET_ACCEPTS = "0x631626ba7e60e01b60005260206000f3"
WALLET_REJECTS = "0x60206000f3"

passed = 0


def ok(what: str) -> None:
    global passed
    passed += 1
    print(f"ok   {what}")


def fail(what: str) -> None:
    print(f"FAIL {what}")
    sys.exit(1)


def expect(cond: bool, what: str) -> None:
    ok(what) if cond else fail(what)


class Checker:
    def __init__(self, rpc: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 30}))
        if not self.w3.is_connected():
            fail(f"cannot reach an Ethereum JSON-RPC node at {rpc}")
        accounts = self.w3.eth.accounts
        if len(accounts) < 2:
            fail("the node must expose at least two unlocked accounts (anvil does)")
        self.deployer, self.relayer = accounts[0], accounts[1]
        self.chain_id = self.w3.eth.chain_id
        artifact = json.loads(ARTIFACT.read_text())
        self.abi = artifact["abi"]
        self.bytecode = artifact["bytecode"]
        self.artifact = artifact

    # ------------------------------------------------------------- helpers

    def send(self, fn, sender: str):
        tx_hash = fn.transact({"from": sender})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt["status"] != 1:
            fail(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def expect_revert(self, fn, sender: str, reason: str, what: str) -> None:
        try:
            fn.transact({"from": sender})
        except ContractLogicError as err:
            message = f"{err} {getattr(err, 'message', '')}"
            if reason not in message:
                print(f"     got: {message}")
            expect(reason in message, f"{what} (reverted: {reason!r})")
            return
        fail(f"{what}: expected a revert with {reason!r}, but it went through")

    def now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def domain(self) -> dict:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.token.address,
        }

    def sign(self, key: bytes, primary: str, message: dict):
        fields = (
            [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}]
            if primary == "CancelAuthorization"
            else AUTH_FIELDS
        )
        return Account.sign_typed_data(key, self.domain(), {primary: fields}, message)

    def authorization(self, frm: str, to: str, value: int, *, valid_after: int = 0, valid_before: int | None = None):
        return {
            "from": frm,
            "to": to,
            "value": value,
            "validAfter": valid_after,
            "validBefore": valid_before if valid_before is not None else self.now() + 3600,
            "nonce": os.urandom(32),
        }

    def args(self, msg: dict) -> list:
        return [msg["from"], msg["to"], msg["value"], msg["validAfter"], msg["validBefore"], msg["nonce"]]

    def vrs(self, signed) -> list:
        return [signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")]

    def fn(self, name: str, sig: str, *args):
        return self.token.get_function_by_signature(name + sig)(*args)

    def bal(self, who: str) -> int:
        return self.token.functions.balanceOf(who).call()

    # -------------------------------------------------------------- checks

    def run(self) -> None:
        expect(
            hashlib.sha256(SOURCE.read_bytes()).hexdigest() == self.artifact["sourceSha256"],
            "artifact sourceSha256 matches VendboxUSDC.sol",
        )

        factory = self.w3.eth.contract(abi=self.abi, bytecode=self.bytecode)
        receipt = self.send(factory.constructor(DOMAIN_NAME, DOMAIN_VERSION), self.deployer)
        self.token = self.w3.eth.contract(address=receipt["contractAddress"], abi=self.abi)
        t = self.token.functions
        print(f"     deployed at {self.token.address} (gas {receipt['gasUsed']}), chain id {self.chain_id}")

        expect(t.name().call() == DOMAIN_NAME, "name() is the domain name")
        expect(t.symbol().call() == "USDC", "symbol() is USDC")
        expect(t.decimals().call() == 6, "decimals() is 6")
        expect(t.version().call() == DOMAIN_VERSION, "version() is the domain version")
        expected_typehashes = {
            "TRANSFER_WITH_AUTHORIZATION_TYPEHASH": "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
            "RECEIVE_WITH_AUTHORIZATION_TYPEHASH": "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
            "CANCEL_AUTHORIZATION_TYPEHASH": "CancelAuthorization(address authorizer,bytes32 nonce)",
        }
        for getter, type_string in expected_typehashes.items():
            expect(getattr(t, getter)().call() == Web3.keccak(text=type_string), f"{getter} is keccak256 of its type")

        domain_type = Web3.keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        expected_separator = Web3.keccak(
            self.w3.codec.encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [domain_type, Web3.keccak(text=DOMAIN_NAME), Web3.keccak(text=DOMAIN_VERSION), self.chain_id, self.token.address],
            )
        )
        expect(t.DOMAIN_SEPARATOR().call() == expected_separator, "DOMAIN_SEPARATOR() matches the EIP-712 domain")
        fields, name, version, chain_id, verifying, salt, extensions = t.eip712Domain().call()
        expect(
            (fields, name, version, chain_id, verifying, salt, extensions)
            == (b"\x0f", DOMAIN_NAME, DOMAIN_VERSION, self.chain_id, self.token.address, b"\x00" * 32, []),
            "eip712Domain() (EIP-5267) describes the domain",
        )

        payer = Account.create()
        payee = Account.create().address
        stranger = Account.create()
        self.send(t.mint(payer.address, 10 * ONE_USDC), self.relayer)
        expect(self.bal(payer.address) == 10 * ONE_USDC, "anyone can mint: payer holds 10 USDC")
        expect(t.totalSupply().call() == 10 * ONE_USDC, "totalSupply is 10 USDC")

        # transferWithAuthorization (v, r, s), relayed by another account.
        msg = self.authorization(payer.address, payee, 1_500_000)
        signed = self.sign(payer.key, "TransferWithAuthorization", msg)
        call = self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(signed))
        expect(not t.authorizationState(payer.address, msg["nonce"]).call(), "authorizationState is false before use")
        receipt = self.send(call, self.relayer)
        self.gas_twa = receipt["gasUsed"]
        print(f"     transferWithAuthorization (v,r,s) gas used: {self.gas_twa}")
        expect(self.bal(payer.address) == 10 * ONE_USDC - 1_500_000, "payer debited exactly 1.5 USDC")
        expect(self.bal(payee) == 1_500_000, "payee credited exactly 1.5 USDC")
        expect(self.bal(self.relayer) == 0, "relayer's token balance untouched")
        expect(t.authorizationState(payer.address, msg["nonce"]).call(), "authorizationState is true after use")
        used = self.token.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)
        expect(
            len(used) == 1 and used[0]["args"]["authorizer"] == payer.address and used[0]["args"]["nonce"] == msg["nonce"],
            "AuthorizationUsed(authorizer, nonce) emitted",
        )
        transfers = self.token.events.Transfer().process_receipt(receipt, errors=DISCARD)
        expect(
            len(transfers) == 1 and transfers[0]["args"]["value"] == 1_500_000 and transfers[0]["args"]["to"] == payee,
            "Transfer(from, to, value) emitted",
        )
        self.expect_revert(call, self.relayer, "FiatTokenV2: authorization is used or canceled", "replay rejected")

        # Validity window.
        msg = self.authorization(payer.address, payee, ONE_USDC, valid_before=self.now() - 1)
        signed = self.sign(payer.key, "TransferWithAuthorization", msg)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(signed)),
            self.relayer, "FiatTokenV2: authorization is expired", "expired authorization rejected",
        )
        msg = self.authorization(payer.address, payee, ONE_USDC, valid_after=self.now() + 3600, valid_before=self.now() + 7200)
        signed = self.sign(payer.key, "TransferWithAuthorization", msg)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(signed)),
            self.relayer, "FiatTokenV2: authorization is not yet valid", "not-yet-valid authorization rejected",
        )

        # Bad signatures.
        msg = self.authorization(payer.address, payee, ONE_USDC)
        wrong = self.sign(stranger.key, "TransferWithAuthorization", msg)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(wrong)),
            self.relayer, "FiatTokenV2: invalid signature", "signature by the wrong key rejected",
        )
        good = self.sign(payer.key, "TransferWithAuthorization", msg)
        tampered = dict(msg, value=2 * ONE_USDC)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(tampered), *self.vrs(good)),
            self.relayer, "FiatTokenV2: invalid signature", "signature over a different value rejected",
        )
        high_s = (SECP256K1_N - good.s).to_bytes(32, "big")
        flipped_v = 55 - good.v  # 27 <-> 28: the malleable twin recovers the same signer
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), flipped_v, good.r.to_bytes(32, "big"), high_s),
            self.relayer, "FiatTokenV2: invalid signature", "high-s (malleable) signature rejected",
        )
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), good.v - 27, good.r.to_bytes(32, "big"), good.s.to_bytes(32, "big")),
            self.relayer, "FiatTokenV2: invalid signature", "v outside {27, 28} rejected",
        )
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), bytes(good.signature)[:64]),
            self.relayer, "FiatTokenV2: invalid signature", "64-byte signature rejected",
        )
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), b"\x00" * 65),
            self.relayer, "FiatTokenV2: invalid signature", "all-zero signature (ecrecover -> 0) rejected",
        )

        # transferWithAuthorization (bytes signature), same authorization as above.
        before = self.bal(payer.address), self.bal(payee)
        receipt = self.send(self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), bytes(good.signature)), self.relayer)
        print(f"     transferWithAuthorization (bytes) gas used: {receipt['gasUsed']}")
        expect(
            (self.bal(payer.address), self.bal(payee)) == (before[0] - ONE_USDC, before[1] + ONE_USDC),
            "bytes-signature overload moves exactly 1 USDC",
        )

        # Insufficient balance.
        msg = self.authorization(payer.address, payee, 100 * ONE_USDC)
        signed = self.sign(payer.key, "TransferWithAuthorization", msg)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), bytes(signed.signature)),
            self.relayer, "ERC20: transfer amount exceeds balance", "overspend rejected",
        )
        expect(not t.authorizationState(payer.address, msg["nonce"]).call(), "failed authorization leaves its nonce unused")

        # receiveWithAuthorization: only the payee may submit it.
        payee_acct = self.relayer  # an unlocked account, so it can send the transaction itself
        msg = self.authorization(payer.address, payee_acct, 500_000)
        signed = self.sign(payer.key, "ReceiveWithAuthorization", msg)
        self.expect_revert(
            self.fn("receiveWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(signed)),
            self.deployer, "FiatTokenV2: caller must be the payee", "receiveWithAuthorization from a non-payee rejected",
        )
        as_transfer = self.sign(payer.key, "TransferWithAuthorization", msg)
        self.expect_revert(
            self.fn("receiveWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(as_transfer)),
            payee_acct, "FiatTokenV2: invalid signature", "TransferWithAuthorization signature not accepted as Receive",
        )
        self.send(self.fn("receiveWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(signed)), payee_acct)
        expect(self.bal(payee_acct) == 500_000, "receiveWithAuthorization (v,r,s) by the payee works")
        msg = self.authorization(payer.address, payee_acct, 250_000)
        signed = self.sign(payer.key, "ReceiveWithAuthorization", msg)
        self.send(self.fn("receiveWithAuthorization", SIG_BYTES, *self.args(msg), bytes(signed.signature)), payee_acct)
        expect(self.bal(payee_acct) == 750_000, "receiveWithAuthorization (bytes) by the payee works")

        # cancelAuthorization, both overloads.
        for label, sig in (("v,r,s", "(address,bytes32,uint8,bytes32,bytes32)"), ("bytes", "(address,bytes32,bytes)")):
            msg = self.authorization(payer.address, payee, ONE_USDC)
            transfer_sig = self.sign(payer.key, "TransferWithAuthorization", msg)
            cancel_msg = {"authorizer": payer.address, "nonce": msg["nonce"]}
            bad_cancel = self.sign(stranger.key, "CancelAuthorization", cancel_msg)
            cancel = self.sign(payer.key, "CancelAuthorization", cancel_msg)
            sig_args = self.vrs(cancel) if label == "v,r,s" else [bytes(cancel.signature)]
            bad_args = self.vrs(bad_cancel) if label == "v,r,s" else [bytes(bad_cancel.signature)]
            self.expect_revert(
                self.fn("cancelAuthorization", sig, payer.address, msg["nonce"], *bad_args),
                self.relayer, "FiatTokenV2: invalid signature", f"cancelAuthorization ({label}) by the wrong key rejected",
            )
            receipt = self.send(self.fn("cancelAuthorization", sig, payer.address, msg["nonce"], *sig_args), self.relayer)
            canceled = self.token.events.AuthorizationCanceled().process_receipt(receipt, errors=DISCARD)
            expect(len(canceled) == 1 and canceled[0]["args"]["nonce"] == msg["nonce"], f"cancelAuthorization ({label}) emits AuthorizationCanceled")
            expect(t.authorizationState(payer.address, msg["nonce"]).call(), f"cancelAuthorization ({label}) marks the nonce")
            self.expect_revert(
                self.fn("transferWithAuthorization", SIG_VRS, *self.args(msg), *self.vrs(transfer_sig)),
                self.relayer, "FiatTokenV2: authorization is used or canceled", f"canceled ({label}) authorization cannot be used",
            )
            self.expect_revert(
                self.fn("cancelAuthorization", sig, payer.address, msg["nonce"], *sig_args),
                self.relayer, "FiatTokenV2: authorization is used or canceled", f"second cancel ({label}) rejected",
            )

        # Plain ERC-20.
        self.send(t.mint(self.deployer, 5 * ONE_USDC), self.deployer)
        self.send(t.transfer(self.relayer, ONE_USDC), self.deployer)
        expect(self.bal(self.relayer) == 750_000 + ONE_USDC, "transfer works")
        self.send(t.approve(self.relayer, 2 * ONE_USDC), self.deployer)
        expect(t.allowance(self.deployer, self.relayer).call() == 2 * ONE_USDC, "approve sets allowance")
        self.send(t.transferFrom(self.deployer, payee, ONE_USDC), self.relayer)
        expect(t.allowance(self.deployer, self.relayer).call() == ONE_USDC, "transferFrom spends allowance")
        self.expect_revert(
            t.transferFrom(self.deployer, payee, 2 * ONE_USDC), self.relayer,
            "ERC20: transfer amount exceeds allowance", "transferFrom over allowance rejected",
        )
        self.expect_revert(
            t.transfer(payee, 100 * ONE_USDC), self.deployer,
            "ERC20: transfer amount exceeds balance", "transfer over balance rejected",
        )

        self.check_erc1271(payee)

    def check_erc1271(self, payee: str) -> None:
        accepts = Web3.to_checksum_address(os.urandom(20))
        rejects = Web3.to_checksum_address(os.urandom(20))
        try:
            self.w3.provider.make_request("anvil_setCode", [accepts, WALLET_ACCEPTS])
            self.w3.provider.make_request("anvil_setCode", [rejects, WALLET_REJECTS])
        except Exception as err:  # not anvil: nothing else to check
            print(f"skip ERC-1271 checks (anvil_setCode unavailable: {err})")
            return
        if self.w3.eth.get_code(accepts) != bytes.fromhex(WALLET_ACCEPTS[2:]):
            print("skip ERC-1271 checks (anvil_setCode had no effect)")
            return
        t = self.token.functions
        for wallet in (accepts, rejects):
            self.send(t.mint(wallet, ONE_USDC), self.relayer)
        before = self.bal(payee)
        msg = self.authorization(accepts, payee, 400_000)
        self.send(self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), b"wallet-approved"), self.relayer)
        expect(self.bal(payee) == before + 400_000 and self.bal(accepts) == 600_000, "ERC-1271 wallet that approves can pay")
        msg = self.authorization(rejects, payee, 400_000)
        self.expect_revert(
            self.fn("transferWithAuthorization", SIG_BYTES, *self.args(msg), b"wallet-approved"),
            self.relayer, "FiatTokenV2: invalid signature", "ERC-1271 wallet that refuses cannot pay",
        )


def main() -> None:
    rpc = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_RPC
    if rpc in ("-h", "--help") or len(sys.argv) > 2:
        print(__doc__)
        sys.exit(0 if rpc in ("-h", "--help") else 2)
    checker = Checker(rpc)
    checker.run()
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()
