#!/usr/bin/env python3
"""Checks the daemon's request signatures with code the project did not
write, for the stand-in targets of tests/it/real_targets.rs.

One JSON request per line on stdin, one JSON answer per line on stdout:

  {"op": "tba", "method", "url", "authorization", "consumer_key",
   "consumer_secret", "token_id", "token_secret", "realm", "now"?}
      OAuth 1.0a with HMAC-SHA256, verified by oauthlib's
      signature.verify_hmac_sha256 (NetSuite token-based authentication).
  {"op": "jwt", "assertion", "public_key_pem", "audience", "issuer", "kid"}
      The OAuth 2.0 client assertion, verified by PyJWT + cryptography
      (PS256 for RSA keys, ES256 for EC P-256).
  {"op": "hmac", "secret", "body_b64", "signature"}
      spatie/laravel-webhook-client's check: hex HMAC-SHA256 of the body,
      computed with Python's hmac module.
  {"op": "standard_webhooks", "secret", "body_b64", "headers"}
      Verified by the Standard Webhooks reference library.
  {"op": "genkey", "kind": "rsa" | "ec"}
      A fresh key pair (PKCS#8 private, SubjectPublicKeyInfo public PEM).

Every answer is {"ok": bool, "reason": str, ...}.
"""
import base64
import hashlib
import hmac
import json
import sys
import time
from urllib.parse import urlparse

import jwt
from oauthlib.common import Request
from oauthlib.oauth1.rfc5849 import signature, utils
from standardwebhooks import Webhook

# NetSuite refuses a timestamp more than this far from its clock.
MAX_SKEW = 300


def tba(r):
    headers = {"Authorization": r["authorization"]}
    try:
        header_params = dict(utils.parse_authorization_header(r["authorization"]))
    except Exception as e:  # a malformed header is a refusal, not a crash
        return {"ok": False, "reason": f"unparsable Authorization header: {e}"}
    if header_params.get("realm") != r["realm"]:
        return {"ok": False, "reason": f"realm {header_params.get('realm')!r} != {r['realm']!r}"}
    params = signature.collect_parameters(
        uri_query=urlparse(r["url"]).query, headers=headers, exclude_oauth_signature=False
    )
    oauth = dict(p for p in params if p[0].startswith("oauth_"))
    if oauth.get("oauth_signature_method") != "HMAC-SHA256":
        return {"ok": False, "reason": "not HMAC-SHA256"}
    if oauth.get("oauth_consumer_key") != r["consumer_key"] or oauth.get("oauth_token") != r["token_id"]:
        return {"ok": False, "reason": "unknown consumer key or token"}
    req = Request(r["url"], http_method=r["method"], headers=headers)
    req.signature = oauth.get("oauth_signature")
    req.params = [(k, v) for k, v in params if k != "oauth_signature"]
    ok = signature.verify_hmac_sha256(req, r["consumer_secret"], r["token_secret"])
    ts = int(oauth.get("oauth_timestamp", "0"))
    nonce = oauth.get("oauth_nonce", "")
    # The stand-in's clock ("now"), which a test may set apart from ours.
    now = r.get("now") or time.time()
    if ok and abs(now - ts) > MAX_SKEW:
        return {"ok": False, "reason": "timestamp out of range", "nonce": nonce, "timestamp": ts}
    return {"ok": bool(ok), "reason": "" if ok else "signature mismatch", "nonce": nonce, "timestamp": ts}


def check_jwt(r):
    try:
        header = jwt.get_unverified_header(r["assertion"])
        if header.get("kid") != r["kid"]:
            return {"ok": False, "reason": f"kid {header.get('kid')!r} != {r['kid']!r}"}
        claims = jwt.decode(
            r["assertion"],
            r["public_key_pem"],
            algorithms=["PS256", "ES256"],
            audience=r["audience"],
            issuer=r["issuer"],
            options={"require": ["iss", "aud", "iat", "exp", "scope"]},
        )
    except Exception as e:
        return {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    if claims["exp"] - claims["iat"] > 3600:
        return {"ok": False, "reason": "exp more than 60 minutes after iat"}
    return {"ok": True, "reason": "", "alg": header.get("alg"), "claims": claims}


def check_hmac(r):
    body = base64.b64decode(r["body_b64"])
    want = hmac.new(r["secret"].encode(), body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(want, r.get("signature") or "")
    return {"ok": ok, "reason": "" if ok else "signature mismatch"}


def check_standard(r):
    body = base64.b64decode(r["body_b64"])
    try:
        Webhook(r["secret"]).verify(body, r["headers"])
    except Exception as e:
        return {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    return {"ok": True, "reason": ""}


def genkey(r):
    """A key pair for a test certificate: {"kind": "rsa" | "ec"}."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if r["kind"] == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return {"ok": True, "reason": "", "private_pem": private, "public_pem": public}


OPS = {
    "tba": tba,
    "jwt": check_jwt,
    "hmac": check_hmac,
    "standard_webhooks": check_standard,
    "genkey": genkey,
}


def main():
    for line in sys.stdin:
        try:
            r = json.loads(line)
            answer = OPS[r["op"]](r)
        except Exception as e:
            answer = {"ok": False, "reason": f"verifier error: {type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
