"""The import pipeline: ``examine`` each file (parse, ``transcode`` its frames, ``dicom_json``
metadata), group it into image sets and record the job (``importer``); ``uploads`` is the user's
side, the S3 upload and StartDICOMImportJob that ``LocalAHI.import_dicom`` and ``local import`` share.
"""
