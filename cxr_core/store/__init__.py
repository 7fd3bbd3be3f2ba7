"""The run store: one folder per run (``runs``), the bundled runs shipped in
``checkpoints/`` (``bundle``) and the export to MLflow. The owner of every file in a run
folder; the layers above read and write runs only through it."""
