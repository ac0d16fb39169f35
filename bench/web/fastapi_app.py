"""The peer of tidepool's web tier in bench/run-web: FastAPI + uvicorn doing the same work per
POST message as `tidepool up` does (src/web/service.cpp, PostMessage), written the way a team
would write it from FastAPI's own tutorials (sync `def` endpoints, which FastAPI runs in its
thread pool; a pydantic model for the body; a SQLite connection per thread; redis-py).

Per POST /v1/apps/{app}/conversations/{id}/messages, as tidepool:
  1. validate: Content-Type application/json, a JSON object whose `text` is a string, not
     blank, at most 32 KiB of UTF-8; Idempotency-Key at most 200 characters; body ≤ 64 KiB;
  2. the conversation must exist in the app (a SELECT);
  3. one write transaction (BEGIN IMMEDIATE): read the conversation's next seq, look up the
     Idempotency-Key, INSERT the message, advance the seq, COMMIT (WAL, synchronous=FULL: the
     commit is fsync'd, as tidepool's store);
  4. read the conversation's last 51 messages and build the request the workers get (the
     message and the history before it), the same JSON as tidepool's;
  5. publish it durably: XADD to the app's Redis stream, Redis running with appendonly yes and
     appendfsync always (Redis fsyncs its AOF before it answers, as tidepool's broker fsyncs
     before a publish completes);
  6. mark the message published (a second fsync'd commit), answer 202 {message_id, ...}.

Errors are FastAPI's own (422 for a body that fails the model) where tidepool answers 400;
the benchmark sends only valid requests.

Settings (environment): BENCH_DB (SQLite file), BENCH_REDIS_URL, BENCH_APPS (comma-separated
app names, default "scent-advisor,gift-concierge").
"""

import json
import os
import secrets
import sqlite3
import threading
import time
from typing import Optional

import redis
from fastapi import FastAPI, Header, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, validator

MAX_TEXT_BYTES = 32 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 200
HISTORY_LIMIT = 50  # tidepool web's default: earlier messages sent with each request

DB_PATH = os.environ.get("BENCH_DB", "fastapi-bench.db")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
APPS = set(os.environ.get("BENCH_APPS", "scent-advisor,gift-concierge").split(","))

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS conversations ("
    "  id TEXT PRIMARY KEY NOT NULL, app TEXT NOT NULL, created_micros INTEGER NOT NULL,"
    "  next_seq INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE IF NOT EXISTS messages ("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  conversation_id TEXT NOT NULL REFERENCES conversations (id),"
    "  seq INTEGER NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'error')),"
    "  text TEXT NOT NULL, request_id TEXT NOT NULL, cards_json TEXT NOT NULL DEFAULT '',"
    "  created_micros INTEGER NOT NULL,"
    "  published INTEGER NOT NULL DEFAULT 0 CHECK (published IN (0, 1)),"
    "  idempotency_key TEXT, UNIQUE (conversation_id, seq))",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_key"
    "  ON messages (conversation_id, idempotency_key) WHERE idempotency_key IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_one_reply_per_request ON messages (request_id)"
    "  WHERE role <> 'user'",
    "CREATE INDEX IF NOT EXISTS messages_unpublished ON messages (created_micros)"
    "  WHERE role = 'user' AND published = 0",
]

_local = threading.local()


def db() -> sqlite3.Connection:
    """This thread's connection (sqlite3 connections are not shared across threads)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        # isolation_level=None: transactions are the explicit BEGIN IMMEDIATE below.
        conn = sqlite3.connect(DB_PATH, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        _local.conn = conn
    return conn


def init_schema() -> None:
    conn = db()
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("COMMIT")


queue = redis.Redis.from_url(REDIS_URL)
app = FastAPI()


@app.on_event("startup")
def startup() -> None:
    init_schema()
    queue.ping()


def now_micros() -> int:
    return time.time_ns() // 1000


def random_id(prefix: str, hex_digits: int) -> str:
    return prefix + secrets.token_hex(hex_digits // 2)


class MessageIn(BaseModel):
    text: str

    @validator("text")
    def text_is_usable(cls, text: str) -> str:  # noqa: N805 (pydantic's signature)
        if not text.strip(" \t\r\n"):
            raise ValueError("text is empty")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise ValueError("text is not valid UTF-8")
        if size > MAX_TEXT_BYTES:
            raise ValueError("text is longer than 32 KiB")
        return text


def error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=code)


@app.post("/v1/apps/{app_name}/conversations", status_code=201)
def create_conversation(app_name: str, response: Response):
    if app_name not in APPS:
        return error(404, f"no app named {app_name}")
    conversation = {"id": random_id("c-", 20), "app": app_name, "created_micros": now_micros()}
    db().execute("INSERT INTO conversations (id, app, created_micros) VALUES (?, ?, ?)",
                 (conversation["id"], app_name, conversation["created_micros"]))
    response.headers["Location"] = f"/v1/apps/{app_name}/conversations/{conversation['id']}"
    return conversation


def history_turns(conn: sqlite3.Connection, conversation_id: str, seq: int) -> list:
    rows = conn.execute(
        "SELECT role, text, seq FROM messages WHERE conversation_id = ? ORDER BY seq DESC "
        "LIMIT ?", (conversation_id, HISTORY_LIMIT + 1)).fetchall()
    turns = []
    for role, text, row_seq in reversed(rows):
        if row_seq >= seq or role == "error":
            continue
        turns.append({"role": "user" if role == "user" else "assistant", "content": text})
    return turns


@app.post("/v1/apps/{app_name}/conversations/{conversation_id}/messages", status_code=202)
def post_message(app_name: str, conversation_id: str, message: MessageIn,
                 idempotency_key: Optional[str] = Header(default=None),
                 content_type: Optional[str] = Header(default=None),
                 content_length: Optional[int] = Header(default=None)):
    if app_name not in APPS:
        return error(404, f"no app named {app_name}")
    if content_length is not None and content_length > MAX_BODY_BYTES:
        return error(413, "the body is larger than 64 KiB")
    if not (content_type or "").startswith("application/json"):
        return error(415, 'send the message as application/json: {"text": "..."}')
    key = idempotency_key or ""
    if len(key) > MAX_IDEMPOTENCY_KEY:
        return error(400, "Idempotency-Key is longer than 200 characters")
    conn = db()
    found = conn.execute("SELECT app FROM conversations WHERE id = ?",
                         (conversation_id,)).fetchone()
    if found is None or found[0] != app_name:
        return error(404, f"no conversation {conversation_id} in app {app_name}")

    message_id = random_id("m-", 24)
    created = now_micros()
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT next_seq FROM conversations WHERE id = ?",
                           (conversation_id,)).fetchone()
        if row is None:
            conn.execute("ROLLBACK")
            return error(404, f"no conversation {conversation_id} in app {app_name}")
        if key:
            earlier = conn.execute(
                "SELECT id, published FROM messages WHERE conversation_id = ? AND "
                "idempotency_key = ?", (conversation_id, key)).fetchone()
            if earlier is not None:
                conn.execute("ROLLBACK")
                return JSONResponse({"message_id": earlier[0], "conversation_id": conversation_id,
                                     "status": "accepted"}, status_code=202,
                                    headers={"Idempotent-Replayed": "true"})
        seq = row[0]
        conn.execute(
            "INSERT INTO messages (id, conversation_id, seq, role, text, request_id, cards_json,"
            " created_micros, published, idempotency_key) VALUES (?, ?, ?, 'user', ?, ?, '', ?,"
            " 0, ?)", (message_id, conversation_id, seq, message.text, message_id, created,
                       key or None))
        conn.execute("UPDATE conversations SET next_seq = ? WHERE id = ?", (seq + 1,
                                                                           conversation_id))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise

    request_data = json.dumps({"conversation_id": conversation_id, "message_id": message_id,
                               "text": message.text,
                               "history": history_turns(conn, conversation_id, seq)},
                              ensure_ascii=False, separators=(",", ":"))
    try:
        queue.xadd(f"requests:{app_name}", {"data": request_data, "app": app_name,
                                            "conversation_id": conversation_id})
    except redis.RedisError as e:
        # Stored, not published: tidepool's sweeper would publish it later.
        return JSONResponse({"error": {"code": 503, "message": f"the message is stored but "
                                       f"the queue did not confirm it yet: {e}"}},
                            status_code=503, headers={"Retry-After": "1"})
    conn.execute("UPDATE messages SET published = 1 WHERE id = ? AND role = 'user'",
                 (message_id,))
    return {"message_id": message_id, "conversation_id": conversation_id, "status": "accepted"}


@app.get("/healthz")
def healthz():
    return Response("ok", media_type="text/plain")
