"""The only part of vsearch that imports ray: cluster start-up, Ray Data UDFs, the Ray Train loop."""
