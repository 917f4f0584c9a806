// Runs PixelMed's validators on many files in one JVM (each validator compiles a large XSLT
// once, which costs seconds): java -cp pixelmed.jar PixelmedBatch.java KIND FILE...
// KIND is "instance" (com.pixelmed.validate.DicomInstanceValidator) or "sr"
// (com.pixelmed.validate.DicomSRValidator). For each file it prints
//   @@@ BEGIN <index>
//   <the validator's own output, exactly as its main() prints it>
//   @@@ END <index>
// or, when the validator throws, "@@@ EXCEPTION <index> <exception>" and the stack trace
// before the END line; whatever PixelMed logs while reading a file is inside its block.
// tests/support/dicom_validate.py parses this.

import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelmedBatch {
    public static void main(String[] args) throws Exception {
        // PixelMed logs problems (e.g. an unreadable attribute) to stderr: keep them in the
        // file's block, where the parser sees them
        System.setErr(System.out);
        if (args.length < 2 || !(args[0].equals("instance") || args[0].equals("sr"))) {
            System.err.println("usage: PixelmedBatch instance|sr FILE...");
            System.exit(2);
        }
        boolean sr = args[0].equals("sr");
        DicomSRValidator srValidator = sr ? new DicomSRValidator() : null;
        DicomInstanceValidator instanceValidator = sr ? null : new DicomInstanceValidator();
        for (int i = 1; i < args.length; i++) {
            int index = i - 1;
            System.out.println("@@@ BEGIN " + index);
            try {
                String result;
                if (sr) {
                    // as DicomSRValidator.main: default options, whole file
                    result = srValidator.validate(args[i]);
                } else {
                    // as DicomInstanceValidator.main: read up to the pixel data
                    AttributeList list = new AttributeList();
                    list.read(args[i], TagFromName.PixelData);
                    result = instanceValidator.validate(list);
                }
                System.out.print(result);
                if (!result.endsWith("\n")) {
                    System.out.println();
                }
            } catch (Exception e) {
                System.out.println("@@@ EXCEPTION " + index + " " + e);
                e.printStackTrace(System.out);
            }
            System.out.println("@@@ END " + index);
            System.out.flush();
        }
    }
}
