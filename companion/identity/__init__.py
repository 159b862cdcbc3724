"""Recipient identity: face detection, alignment and 128-D embeddings with dlib's models
(`faces`), enrolment of a recipient's template from photos (`enrol`), and the k-of-n
verification over camera frames (`verify`) that the hand-over step consults."""
