// The context methods of `npm run bench:quality`: each turns one encoded example
// (scripts/train/common.mjs encodeExample) into what the model is prompted with. A new method
// adds an entry here and its row appears in the JSON, the chart and the README table.

/** Tokens generated after the prompt (answers are a few tokens and </s>). */
export const MAX_NEW_TOKENS = 16;

// Methods with `policy` run on stored documents: the store's prefix is the prompt's text before
// the first document, each document is stored as its own tokens, and the question is the query,
// so every method reads exactly the same tokens (`model.generate({ store, documents, query })`).
export const STORE_METHODS = {
  cacheFocus: { label: 'CacheFocus (stored documents, pruning, re-allocation)', policy: { name: 'cacheFocus' } },
  'cf-no-pruning': { label: 'CacheFocus without pruning (reuse + windows only)', policy: { name: 'cacheFocus', pruneLayers: [] } },
  'cf-no-allocation': { label: "CacheFocus without re-allocation (allocation 'none')", policy: { name: 'cacheFocus', allocation: 'none' } },
  'cf-no-accumulate': { label: 'CacheFocus scoring at the pruning layer only (accumulate false)', policy: { name: 'cacheFocus', accumulate: false } },
  parallelWindows: { label: 'parallel windows (every document at |P|)', policy: { name: 'parallelWindows' } },
  ape: { label: 'APE (parallel windows; documents at temperature 0.9, scale 0.9)', policy: { name: 'ape' } },
  'stored-full': { label: 'stored documents at consecutive positions, no pruning', policy: { name: 'full' } },
};

export const METHODS = {
  full: {
    label: 'full attention, truncated to T',
    prompt(enc, T) {
      const { ids, docStarts, promptLength, docEnd } = enc;
      const prefix = ids.slice(0, docStarts[0]);
      const question = ids.slice(docEnd, promptLength);
      let first = 0;
      const size = (k) => prefix.length + (docEnd - docStarts[k]) + question.length + MAX_NEW_TOKENS;
      while (first < docStarts.length && size(first) > T) first++;
      const docs = first < docStarts.length ? ids.slice(docStarts[first], docEnd) : [];
      return { tokens: [...prefix, ...docs, ...question], keptDocs: docStarts.length - first };
    },
  },
  'full-unbounded': {
    label: 'full attention, past T (no truncation)',
    prompt(enc) {
      return { tokens: enc.ids.slice(0, enc.promptLength), keptDocs: enc.docStarts.length };
    },
  },
};

for (const [name, m] of Object.entries(STORE_METHODS)) METHODS[name] = m;
