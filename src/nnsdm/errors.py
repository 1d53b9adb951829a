"""The one exception type the command line turns into a one-line error message."""


class NnsdmError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    The message must name the file (or option) at fault and the problem, e.g.
    ``"case_001_0000.nii.gz: not a 3D image (shape 512x512)"``.
    """
