"""POSTs a JSON body through the gateway with httpx and prints what came back as JSON.

Usage: python3 http_post.py URL TOKEN BODY
Prints {"status": N, "json": ...} (the answer's JSON, or null).
"""

import json
import sys

import httpx


def main():
    url, token, body = sys.argv[1:4]
    response = httpx.post(
        url,
        content=body.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    print(json.dumps({"status": response.status_code, "json": answer}))


if __name__ == "__main__":
    main()
