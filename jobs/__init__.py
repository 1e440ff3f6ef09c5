"""Ray jobs, one module each with ``main(config)``: generate, train, reindex, evaluate, demo.

A job is configuration plus calls into ``vsearch``; it holds no algorithm of its own.
"""
