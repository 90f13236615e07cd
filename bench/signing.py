"""What signed updates cost: signing on the node, checking on the aggregator.

For f32 updates of the demo model (650 floats) and of 100 KB and 1 MB: the
median time to sign (digest + Ed25519) and to verify, next to the reference
measured in the same run, the aggregator's own work on the same payload
without signatures (`decode_update` + `validate_update`: unpack, schema,
layout, NaN scan and norm). The ratio says how much slower the aggregator's
per-update path gets when a fleet requires signatures.

    python bench/signing.py [--repeats 200]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedbus.aggregator.validation import ValidationContext, decode_update, validate_update
from fedbus.broker.codec import DEFAULT_LIMITS, encode
from fedbus.broker.messages import UpdateMessage
from fedbus.broker.signing import new_signing_key, public_key_bytes, sign_update, verify_update
from fedbus.broker.tensors import encode_weights

SIZES = {"demo 650 floats": 650, "100 KB": 25_000, "1 MB": 250_000}


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    key = new_signing_key()
    public = public_key_bytes(key)
    rows = []
    header = ("update", "bytes", "sign us", "verify us", "check us", "verify/check")
    print(f"{header[0]:<18}" + "".join(f"{h:>14}" for h in header[1:]))
    for label, size in SIZES.items():
        rng = np.random.default_rng(0)
        delta = {"w": rng.standard_normal(size).astype(np.float32)}
        message = UpdateMessage("node-0001", 7, 3, 100, encode_weights(delta), train_loss=0.5)
        signed = dataclasses.replace(message, signature=sign_update(key, "default", message))
        payload = encode(signed)
        context = ValidationContext(
            version=3,
            layout={"w": (size,)},
            max_staleness=10,
            known_nodes=None,
            last_seq=None,
            limits=dataclasses.replace(DEFAULT_LIMITS, max_payload_bytes=len(payload) + 1),
        )

        def check(payload: bytes = payload, context: ValidationContext = context) -> object:
            decoded = decode_update(payload, context.limits)
            assert isinstance(decoded, UpdateMessage)
            return validate_update(decoded, "node-0001", context)

        sign = _median_seconds(lambda m=message: sign_update(key, "default", m), args.repeats)
        verify = _median_seconds(lambda s=signed: verify_update(public, "default", s), args.repeats)
        base = _median_seconds(check, args.repeats)
        rows.append(
            {
                "update": label,
                "bytes": len(payload),
                "sign_us": round(sign * 1e6, 1),
                "verify_us": round(verify * 1e6, 1),
                "check_us": round(base * 1e6, 1),
                "verify_over_check": round(verify / base, 2),
            }
        )
        r = rows[-1]
        values = (r["bytes"], r["sign_us"], r["verify_us"], r["check_us"], r["verify_over_check"])
        print(f"{label:<18}" + "".join(f"{v:>14}" for v in values))
    print(json.dumps({"bench": "signing", "rows": rows}))


if __name__ == "__main__":
    main()
