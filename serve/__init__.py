"""Ray Serve application: thin deployments over ``vsearch`` objects, built by ``serve.app``."""
