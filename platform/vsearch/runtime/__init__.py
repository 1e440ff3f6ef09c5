"""The only part of vsearch that imports ray: cluster start-up, Ray Data UDFs, the Ray Train loop.

Importing it (as every Ray worker running our code does, before the modules below load faiss)
keeps faiss's loader from printing which SIMD build it picked in every worker's log.
"""

import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)
