#!/usr/bin/env python3
"""Prints the "## Crypto" table of docs/performance.md from Criterion's
medians (target/criterion/*/*/new/estimates.json) after
`cargo bench -p courier-crypto --bench crypto`. Usage: report.py [target-dir]"""
import json, os, sys

root = os.path.join(sys.argv[1] if len(sys.argv) > 1 else "target", "criterion")

def median_ns(group, name):
    path = os.path.join(root, group, name.replace("/", "_"), "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]

def fmt(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"

rows = []
def row(group, name, base_group=None, base=None, note=""):
    t = median_ns(group, name)
    ratio = ""
    if base:
        b = median_ns(base_group, base)
        ratio = f"{t / b:.2f}× `{base_group}/{base}`"
    rows.append(f"| `{group}/{name}` | {fmt(t)} | {ratio} | {note} |")

for p in ["aes256gcm_seal/64B", "aes256gcm_seal/1KiB", "aes256gcm_seal/64KiB",
          "aead_plus_2hmac/64B", "aead_plus_2hmac/1KiB", "aead_plus_2hmac/64KiB",
          "hmac_sha256", "x25519_dh", "ed25519_sign", "ed25519_verify"]:
    row("primitive", p, note="baseline")
row("x3dh", "initiate", "primitive", "x25519_dh", "4 DH + ephemeral key + HKDF")
row("x3dh", "respond", "primitive", "x25519_dh", "4 DH + HKDF")
for s in ["64B", "1KiB", "64KiB"]:
    row("ratchet", f"encrypt/{s}", "primitive", f"aead_plus_2hmac/{s}", "symmetric step (goal ≤ 2×)")
for s in ["64B", "1KiB", "64KiB"]:
    row("ratchet", f"decrypt/{s}", "primitive", f"aead_plus_2hmac/{s}", "symmetric step (goal ≤ 2×)")
row("ratchet", "dh_step/64B", "primitive", "x25519_dh", "decrypt under a new ratchet key + next encrypt (2 DH + key gen)")
row("ratchet", "restore_pickle", "primitive", "ed25519_verify", "re-verifies both identities")
for s in ["64B", "1KiB", "64KiB"]:
    row("sender_key", f"encrypt/{s}", "primitive", "ed25519_sign", "one seal + one signature")
for s in ["64B", "1KiB", "64KiB"]:
    row("sender_key", f"decrypt/{s}", "primitive", "ed25519_verify", "one verify + one open")
row("sealed", "seal/1KiB", "primitive", "x25519_dh", "key gen + 1 DH + HKDF + seal")
row("sealed", "open/1KiB", "primitive", "x25519_dh", "1 DH + HKDF + open + identity verify")

print("| benchmark | median | ratio | what |")
print("|---|---|---|---|")
print("\n".join(rows))
