"""The request side of the local AHI (moto's ``urls.py`` and the HTTP half of ``responses.py``).

``app`` routes each request by method and raw path to an operation, ``protocol`` reads and writes
restJson1 from botocore's service model, ``validation`` checks values against it, ``pagination``
issues and checks ``nextToken``, ``sigv4`` and ``faults`` are the guards ``security`` installs.
Nothing here touches the store: the operation's handler in :mod:`..responses` does.
"""
