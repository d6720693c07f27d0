"""Exit codes of the BIDS-App (BIDS Apps execution spec, plus BSD ``sysexits`` codes)."""

OK = 0
PARTICIPANT_FAILED = 1  #: at least one participant failed; the others finished
USAGE = 2  #: bad command line or configuration
BIDS_VALIDATION = 16  #: the input is not a valid BIDS dataset
UNKNOWN_LEVEL = 17  #: unknown analysis level
NO_FILES = 18  #: no participant or file matched the selection
EX_NOINPUT = 66  #: an input file could not be read
EX_SOFTWARE = 70  #: internal error
EX_CANTCREAT = 73  #: an output could not be created
EX_TEMPFAIL = 75  #: no GPU / out of GPU memory: try again later or on another node
