"""The meter side: one asyncio agent per smart meter, sharing a batched trainer."""
