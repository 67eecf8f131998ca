#!/usr/bin/env node
// The kvfocus command line: `kvfocus cache build|stats|verify` (see `kvfocus --help`).
'use strict';
require('../dist/cjs/cli/main.js')
  .main(process.argv)
  .then((code) => {
    process.exitCode = code;
  });
