"""Read-only look at the Redis broker: which analyses have a message, how deep the queue is.

The reconciler uses this to tell a lost message (no copy in the broker) from a long
queue (a copy is waiting), so it resends only what was really lost. Celery's Redis
transport keeps waiting messages in a list named after the queue (plus one list per
priority step) and delivered, unacknowledged ones in the "unacked" hash, where a worker
holds them until the task ends (also while a retry countdown runs).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings

from portal.analyses import queue

logger = logging.getLogger(__name__)

UNACKED_KEY = "unacked"
# kombu's Redis transport: priority steps 0, 3, 6, 9; step 0 is the bare queue name.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
SCAN_CHUNK = 500
TIMEOUT_S = 5


class BrokerUnavailable(RuntimeError):
    """The broker could not be read; str() says why."""


def _client() -> redis.Redis:
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise BrokerUnavailable(f"not a Redis broker: {url.split('://', 1)[0]}")
    return redis.Redis.from_url(
        url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
    )


def queue_keys(queue: str) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def queue_depths() -> dict[str, int]:
    """Messages waiting in each queue the workers consume (not yet delivered)."""
    queues = dict.fromkeys(
        [settings.CELERY_INFERENCE_QUEUE, "celery", settings.CELERY_SHADOW_QUEUE]
    )
    client = _client()
    try:
        depths = {}
        for queue in queues:
            depths[queue] = sum(int(client.llen(key)) for key in queue_keys(queue))
        depths["unacked"] = int(client.hlen(UNACKED_KEY))
        return depths
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc
    finally:
        client.close()


def analysis_ids_with_messages() -> set[int]:
    """Ids of analyses that have a message waiting or delivered but not acknowledged."""
    client = _client()
    try:
        ids: set[int] = set()
        for key in queue_keys(settings.CELERY_INFERENCE_QUEUE):
            for raw in _list_items(client, key):
                analysis_id = _analysis_id(raw)
                if analysis_id is not None:
                    ids.add(analysis_id)
        for _, raw in client.hscan_iter(UNACKED_KEY, count=SCAN_CHUNK):
            try:
                payload = json.loads(raw)[0]
            except (ValueError, TypeError, IndexError, KeyError):
                continue
            analysis_id = _analysis_id(payload)
            if analysis_id is not None:
                ids.add(analysis_id)
        return ids
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc
    finally:
        client.close()


def _list_items(client: redis.Redis, key: str) -> Iterator[bytes]:
    length = int(client.llen(key))
    for start in range(0, length, SCAN_CHUNK):
        yield from client.lrange(key, start, start + SCAN_CHUNK - 1)


def _analysis_id(raw: bytes | str | dict[str, Any]) -> int | None:
    """The analysis id an analyze_scan message carries, or None for any other message."""
    try:
        message = raw if isinstance(raw, dict) else json.loads(raw)
        headers = message.get("headers") or {}
        if headers.get("task") != queue.ANALYZE_SCAN:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        logger.warning("unreadable message in the broker; ignored")
        return None
