"""Leaves both tiers import: the transport contract, the error tree, model facts, warm-schedule
parsing, logging. No FastAPI, aiohttp or subprocess here.
"""
