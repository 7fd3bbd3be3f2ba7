"""Images on disk: decoding one film (``imaging``), Kaggle-layout folders, patient ids
and the patient-grouped split manifest (``folders``), the data spec a user names
(``sources``), the synthetic demo set, downloads, the allowed data roots and the uint8
decode cache. The bottom layer with ``models`` and ``scoring``: nothing here knows a run."""
