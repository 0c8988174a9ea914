"""The local development stack: a private ``redis-server``, local Ray, gateway replicas and the
ACS stand-in on one machine (``LocalStack``), and ``rtvoice demo`` on top of it.

Development and tests only: production packages (actors, gateway, storage) never import this.
"""
