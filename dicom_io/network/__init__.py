"""DICOM networking: STOW-RS parsing and responses, a C-ECHO/C-STORE SCP, DIMSE and DICOMweb clients.

No HTTP framework here (api/routes/dicomweb.py wraps :mod:`dicom_io.network.stow`); destinations are parsed by
:mod:`dicom_io.network.destinations` and never expose passwords in ``str``/``repr``/logs.
"""
