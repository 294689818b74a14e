"""Load forecasting: windows, the model, batched local training, evaluation."""
