"""The two ways loading data fails, each with a one-line message."""


class DataUnavailableError(RuntimeError):
  """The data set is not on this machine; the message says how to get it."""


class InvalidDataError(ValueError):
  """Data that cannot be trained on: damaged files, labels out of range, NaN/inf inputs, ..."""
