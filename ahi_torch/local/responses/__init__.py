"""Handlers (moto's ``responses.py``): one module per resource.

Each handler turns an operation's parameters into calls on the backend (:mod:`..models`) and
shapes what they return into the response the service model describes. SQL lives in the backend.
"""
