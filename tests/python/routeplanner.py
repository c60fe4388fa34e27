"""Drives the route planner routes through the real `lavalink` client library (PyPI).

Usage: python3 routeplanner.py HOST PORT PASSWORD URL ADDRESS
Loads URL, reads the planner status, frees ADDRESS, then all; prints one JSON line with what the
library returned; exits non-zero on any failure.
"""
import asyncio
import json
import sys

import lavalink


async def main(host: str, port: int, password: str, url: str, address: str) -> None:
    client = lavalink.Client(user_id=123456789012345678)
    node = client.add_node(host, port, password, "eu", "caldera", connect=False)
    try:
        result = await client.get_tracks(url, node=node)
        before = await node.get_routeplanner_status()
        freed_one = await node.routeplanner_free_address(address)
        after_one = await node.get_routeplanner_status()
        freed_all = await node.routeplanner_free_all_failing()
        after_all = await node.get_routeplanner_status()
        print(json.dumps({
            "load_type": str(result.load_type),
            "before": before,
            "freed_one": freed_one,
            "after_one": after_one,
            "freed_all": freed_all,
            "after_all": after_all,
        }))
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
