"""Simple classifiers on frozen features, as in DeCAF: logistic regression and a linear SVM.

:func:`make_classifier` builds a scikit-learn pipeline ``[scaling] -> [dropout] -> LR | SVM``
whose regularisation ``C`` is chosen by stratified k-fold cross-validation *on the training
split only* (:class:`sklearn.model_selection.GridSearchCV`, mean per-class accuracy as the
score), as the paper did. Scaling is ``"none"``, ``"standardize"`` (zero mean, unit variance per
dimension, fitted on the training split) or ``"l2"`` (each row to unit L2 norm).

DeCAF's "dropout" variant, exactly as implemented here (:class:`DropoutClassifier`): the paper
trained its classifiers on features that had passed through the net's own dropout. We apply
Caffe's *inverted* dropout to the training features: each training row is replicated
``copies`` times, each copy multiplied by an independent Bernoulli(keep = 1 - ``rate``) mask
and scaled by ``1 / (1 - rate)`` (Caffe's Dropout layer scales at train time, so the expected
value of every feature is unchanged); the classifier is fit on all copies. At test time the
features pass unchanged (Caffe's TEST phase: dropout is the identity), which equals averaging
the decision function over masks in expectation for the linear part. Masks come from
``numpy.random.default_rng(seed)``, so a fit is reproducible. Inside cross-validation the masks
are drawn on each fold's training part only; validation rows are never masked.

This module does not extract features, does not do multi-label or detection, and does not tune
anything but ``C``.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

#: the C grid searched by cross-validation (log-spaced, as is usual for linear models)
DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class DropoutClassifier(ClassifierMixin, BaseEstimator):
    """Fit ``estimator`` on ``copies`` inverted-dropout-masked replicas of X; predict on X as is.

    X: (N, D) features; y: (N,) labels. ``rate`` is the drop probability (0.5 in Caffe/DeCAF).
    ``rate == 0`` fits the estimator on X unchanged (no replication)."""

    def __init__(self, estimator=None, rate=0.5, copies=5, seed=0):
        self.estimator = estimator
        self.rate = rate
        self.copies = copies
        self.seed = seed

    def augment(self, X, y):
        """(N, D), (N,) -> (N*copies, D), (N*copies,) masked and scaled by 1/(1-rate)."""
        X = np.asarray(X, np.float32)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.rate}")
        if self.rate == 0.0:
            return X, np.asarray(y)
        rng = np.random.default_rng(self.seed)
        keep = 1.0 - self.rate
        reps = np.repeat(X, self.copies, axis=0)
        mask = rng.random(reps.shape, dtype=np.float32) < keep
        return reps * mask / np.float32(keep), np.repeat(np.asarray(y), self.copies)

    def fit(self, X, y):
        Xa, ya = self.augment(X, y)
        self.estimator_ = clone(self.estimator if self.estimator is not None else LogisticRegression())
        self.estimator_.fit(Xa, ya)
        self.classes_ = self.estimator_.classes_
        return self

    def predict(self, X):
        return self.estimator_.predict(np.asarray(X, np.float32))

    def decision_function(self, X):
        return self.estimator_.decision_function(np.asarray(X, np.float32))


def base_estimator(kind, C=1.0, seed=0):
    """``"lr"`` -> multinomial LogisticRegression (lbfgs), ``"svm"`` -> one-vs-rest LinearSVC."""
    if kind == "lr":
        return LogisticRegression(C=C, max_iter=2000)
    if kind == "svm":
        return LinearSVC(C=C, max_iter=5000, random_state=seed)
    raise ValueError(f"classifier must be 'lr' or 'svm', got {kind!r}")


def make_classifier(kind="lr", scale="standardize", dropout=0.0, copies=5, Cs=DEFAULT_CS, cv=3, seed=0):
    """A fit-able estimator: Pipeline(scale, DropoutClassifier(base)) wrapped in a C search.

    kind : ``"lr"`` | ``"svm"``; scale : ``"none"`` | ``"standardize"`` | ``"l2"``;
    dropout : drop rate for the DeCAF dropout variant (0 = off); Cs : grid for C; cv : folds.
    Returns a :class:`CVClassifier` (its ``C_`` / ``cv_note_`` say what the search chose)."""
    steps = []
    if scale == "standardize":
        steps.append(("scale", StandardScaler()))
    elif scale == "l2":
        steps.append(("scale", Normalizer(norm="l2")))
    elif scale != "none":
        raise ValueError(f"scale must be 'none', 'standardize' or 'l2', got {scale!r}")
    steps.append(("clf", DropoutClassifier(base_estimator(kind, seed=seed), rate=dropout, copies=copies,
                                           seed=seed)))
    return CVClassifier(Pipeline(steps), Cs=Cs, cv=cv, seed=seed)


class CVClassifier(ClassifierMixin, BaseEstimator):
    """Choose C by stratified ``cv``-fold cross-validation on the training data, refit on all of it.

    With fewer than 2 training images in some class (the 1-per-class point of the Caltech
    curve) no stratified split exists; the search is then skipped and ``C = 1`` is used, and
    ``cv_note_`` says so (the report prints it)."""

    def __init__(self, pipeline, Cs=DEFAULT_CS, cv=3, seed=0):
        self.pipeline = pipeline
        self.Cs = Cs
        self.cv = cv
        self.seed = seed

    def fit(self, X, y):
        # These problems are small (hundreds of rows): multi-threaded BLAS costs more in thread
        # start-up and contention than it gains (measured 15-50x slower on a busy 2-core box).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X, y)

    def _fit(self, X, y):
        y = np.asarray(y)
        counts = np.unique(y, return_counts=True)[1]
        folds = int(min(self.cv, counts.min()))
        with warnings.catch_warnings():
            # the C grid deliberately includes values where lbfgs/liblinear stop at max_iter
            warnings.simplefilter("ignore", ConvergenceWarning)
            if folds < 2 or len(self.Cs) == 1:
                self.C_ = 1.0 if len(self.Cs) != 1 else float(self.Cs[0])
                self.cv_note_ = ("C=1 (no CV: a class has < 2 training images)" if len(self.Cs) != 1
                                 else f"C={self.C_:g} fixed")
                self.best_ = clone(self.pipeline).set_params(clf__estimator__C=self.C_).fit(X, y)
                self.best_score_ = float("nan")
            else:
                search = GridSearchCV(
                    clone(self.pipeline), {"clf__estimator__C": list(self.Cs)},
                    cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed),
                    scoring="balanced_accuracy", refit=True, n_jobs=None)
                search.fit(X, y)
                self.C_ = float(search.best_params_["clf__estimator__C"])
                self.cv_note_ = f"C={self.C_:g} by {folds}-fold CV"
                self.best_ = search.best_estimator_
                # mean over the folds of the held-out balanced accuracy at the chosen C: the score
                # select_feature_set compares feature sets by (training rows only)
                self.best_score_ = float(search.best_score_)
        self.classes_ = self.best_.classes_
        return self

    def predict(self, X):
        with threadpool_limits(limits=1, user_api="blas"):
            return self.best_.predict(X)

    def decision_function(self, X):
        with threadpool_limits(limits=1, user_api="blas"):
            return self.best_.decision_function(X)


def select_feature_set(train_sets, y, kind="lr", scale="standardize", dropout=0.0, seed=0, **kw):
    """train_sets: K arrays (N, D_k) of the *training* rows, one per candidate feature set, in the
    order requested; y: (N,) -> (k, scores, fitted CVClassifier of candidate k).

    Each candidate gets the C search of :func:`make_classifier` (stratified CV on these rows only);
    its score is the CV mean per-class accuracy at its best C. The highest score wins; a tie goes
    to the first listed (a later candidate must be strictly better). Candidate k's classifier is
    the one refit on all the rows, so predicting with it equals fitting candidate k alone. Without
    CV (a class with < 2 rows) every score is NaN and the first candidate is taken. Rows with NaN
    in a candidate are dropped from that candidate's fit only."""
    if not len(train_sets):
        raise ValueError("select_feature_set: no candidate feature sets")
    y = np.asarray(y)
    best, scores, clfs = 0, [], []
    for k, X in enumerate(train_sets):
        X = np.asarray(X)
        ok = ~np.isnan(X).any(axis=1)
        clf = make_classifier(kind, scale=scale, dropout=dropout, seed=seed, **kw).fit(X[ok], y[ok])
        scores.append(clf.best_score_)
        clfs.append(clf)
        if clf.best_score_ > scores[best]:      # strict: ties (and NaN) keep the earlier candidate
            best = k
    return best, scores, clfs[best]


def mean_per_class_accuracy(y_true, y_pred) -> float:
    """The paper's measure: the mean over classes of each class's accuracy (= balanced accuracy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # classes absent from y_pred are fine
        return float(balanced_accuracy_score(y_true, y_pred))


def classifier_name(kind, dropout=0.0):
    return ("LogReg" if kind == "lr" else "SVM") + (" + dropout" if dropout else "")
