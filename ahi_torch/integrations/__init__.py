"""Drop-in pieces for the tools medical-imaging teams already run.

- :mod:`ahi_torch.integrations.monai` (``pip install 'ahi-torch[monai]'``): ``LoadAHId`` and
  ``to_metatensor``, so MONAI transforms and caching datasets see AHI volumes as they see
  ``LoadImaged`` output.
- :mod:`ahi_torch.integrations.lightning` (``pip install 'ahi-torch[lightning]'``):
  ``AHIDataModule``, whose samplers Lightning recognises as distributed.

Each module imports its framework on import; the rest of ahi_torch never does.
"""
