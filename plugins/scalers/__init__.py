"""Scaler drivers (runink.scalers): what starts and stops worker nodes for the autoscaler."""
