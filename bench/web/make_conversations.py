"""Creates conversations through a web tier's API and prints their ids, one a line (for
bench/run-web: the pools of conversations that wrk posts to).

    make_conversations.py BASE_URL APP COUNT [CONNECTIONS]

BASE_URL is http://HOST:PORT; CONNECTIONS keep-alive connections work in parallel (default 8).
Exits 1 on the first answer that is not 201.
"""

import http.client
import json
import sys
import threading
import urllib.parse


def main() -> int:
    base, app, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    url = urllib.parse.urlsplit(base)
    path = f"/v1/apps/{app}/conversations"
    ids: list = []
    failures: list = []
    lock = threading.Lock()

    def work(share: int) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        for _ in range(share):
            conn.request("POST", path, body=b"", headers={"Content-Length": "0"})
            response = conn.getresponse()
            body = response.read()
            if response.status != 201:
                with lock:
                    failures.append(f"{response.status} {body[:200]!r}")
                return
            with lock:
                ids.append(json.loads(body)["id"])
        conn.close()

    shares = [count // connections + (1 if i < count % connections else 0)
              for i in range(connections)]
    threads = [threading.Thread(target=work, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print(f"make_conversations: {failures[0]}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(i + "\n" for i in ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
