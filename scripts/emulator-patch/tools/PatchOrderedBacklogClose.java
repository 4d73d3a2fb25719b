// Build-time tool (run by scripts/services.sh, never shipped): writes a copy
// of the emulator jar's OrderedMessageBacklog.class whose empty close() calls
// OrderedBacklogs.closeAll(this, this.backlogs) instead, and whose
// onStreamingPullCompleted(streamId) calls OrderedBacklogs.streamEnded(...)
// then its own recalculateStreamIndex() (see
// ../com/google/cloud/pubsub/testing/v1/OrderedBacklogs.java for why).
//
// Only those method bodies change; the rest of the class is copied as it is.
// It uses the ASM copy inside the JDK (java.base, JDK 11-21), so it needs
// --add-exports java.base/jdk.internal.org.objectweb.asm=ALL-UNNAMED at
// compile and run time and nothing to download.
//
// Usage: java PatchOrderedBacklogClose <emulator jar> <output dir>
// Exit 0: written; 3: the jar's close() is not the empty one this patch
// expects, or its onStreamingPullCompleted() is not the one it replaces
// (another emulator version: nothing written); 1: any other failure.
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.jar.JarFile;
import jdk.internal.org.objectweb.asm.ClassReader;
import jdk.internal.org.objectweb.asm.ClassVisitor;
import jdk.internal.org.objectweb.asm.ClassWriter;
import jdk.internal.org.objectweb.asm.MethodVisitor;
import jdk.internal.org.objectweb.asm.Opcodes;

public final class PatchOrderedBacklogClose {
  private static final String PKG = "com/google/cloud/pubsub/testing/v1/";
  private static final String OWNER = PKG + "OrderedMessageBacklog";
  private static final String HELPER = PKG + "OrderedBacklogs";

  public static void main(String[] args) throws IOException {
    if (args.length != 2) {
      System.err.println("usage: PatchOrderedBacklogClose <emulator jar> <output dir>");
      System.exit(1);
    }
    byte[] original;
    try (JarFile jar = new JarFile(args[0])) {
      var entry = jar.getJarEntry(OWNER + ".class");
      if (entry == null) {
        System.err.println(OWNER + " is not in " + args[0]);
        System.exit(3);
        return;
      }
      original = jar.getInputStream(entry).readAllBytes();
    }
    ClassReader reader = new ClassReader(original);
    if (!closeIsEmpty(reader)) {
      System.err.println(OWNER + ".close() is not empty in " + args[0] + ": not patched");
      System.exit(3);
    }
    if (!streamEndIsTheOriginal(reader)) {
      System.err.println(
          OWNER + ".onStreamingPullCompleted() is not the expected one in " + args[0] + ": not patched");
      System.exit(3);
    }
    // No COMPUTE_* flag: the new body has no branch (no frames) and states its maxima.
    ClassWriter writer = new ClassWriter(reader, 0);
    reader.accept(
        new ClassVisitor(Opcodes.ASM7, writer) {
          @Override
          public MethodVisitor visitMethod(
              int access, String name, String desc, String signature, String[] exceptions) {
            MethodVisitor out = super.visitMethod(access, name, desc, signature, exceptions);
            if (isStreamEnd(name, desc)) {
              writeStreamEnd(out);
              return null;
            }
            if (!isClose(name, desc)) {
              return out;
            }
            // The original body (a lone RETURN) is dropped; this one written instead.
            out.visitCode();
            out.visitVarInsn(Opcodes.ALOAD, 0);
            out.visitVarInsn(Opcodes.ALOAD, 0);
            out.visitFieldInsn(Opcodes.GETFIELD, OWNER, "backlogs", "Ljava/util/LinkedHashMap;");
            out.visitMethodInsn(
                Opcodes.INVOKESTATIC, HELPER, "closeAll", "(Ljava/lang/Object;Ljava/util/Map;)V", false);
            out.visitInsn(Opcodes.RETURN);
            out.visitMaxs(2, 1);
            out.visitEnd();
            return null;
          }
        },
        0);
    Path target = Path.of(args[1], OWNER + ".class");
    Files.createDirectories(target.getParent());
    Files.write(target, writer.toByteArray());
  }

  /**
   * OrderedBacklogs.streamEnded(backlogs, orderingKeysToStreamIds,
   * streamIdsToIndexes, streamId); this.recalculateStreamIndex(); return.
   * No branch, so no frames; locals: this and the long streamId.
   */
  private static void writeStreamEnd(MethodVisitor out) {
    out.visitCode();
    out.visitVarInsn(Opcodes.ALOAD, 0);
    out.visitFieldInsn(Opcodes.GETFIELD, OWNER, "backlogs", "Ljava/util/LinkedHashMap;");
    out.visitVarInsn(Opcodes.ALOAD, 0);
    out.visitFieldInsn(Opcodes.GETFIELD, OWNER, "orderingKeysToStreamIds", "Ljava/util/HashMap;");
    out.visitVarInsn(Opcodes.ALOAD, 0);
    out.visitFieldInsn(Opcodes.GETFIELD, OWNER, "streamIdsToIndexes", "Ljava/util/HashMap;");
    out.visitVarInsn(Opcodes.LLOAD, 1);
    out.visitMethodInsn(
        Opcodes.INVOKESTATIC,
        HELPER,
        "streamEnded",
        "(Ljava/util/Map;Ljava/util/Map;Ljava/util/Map;J)V",
        false);
    out.visitVarInsn(Opcodes.ALOAD, 0);
    out.visitMethodInsn(Opcodes.INVOKESPECIAL, OWNER, "recalculateStreamIndex", "()V", false);
    out.visitInsn(Opcodes.RETURN);
    out.visitMaxs(5, 3);
    out.visitEnd();
  }

  private static boolean isStreamEnd(String name, String desc) {
    return name.equals("onStreamingPullCompleted") && desc.equals("(J)V");
  }

  /**
   * True when onStreamingPullCompleted(long) is the jar 0.8.20 one: it removes
   * the stream's index, removes its keys with an iterator, and recalculates.
   */
  private static boolean streamEndIsTheOriginal(ClassReader reader) {
    java.util.List<String> calls = new java.util.ArrayList<>();
    boolean[] found = {false};
    reader.accept(
        new ClassVisitor(Opcodes.ASM7) {
          @Override
          public MethodVisitor visitMethod(
              int access, String name, String desc, String signature, String[] exceptions) {
            if (!isStreamEnd(name, desc)) {
              return null;
            }
            found[0] = true;
            return new MethodVisitor(Opcodes.ASM7) {
              @Override
              public void visitMethodInsn(
                  int opcode, String owner, String name, String desc, boolean itf) {
                calls.add(name);
              }
            };
          }
        },
        ClassReader.SKIP_DEBUG | ClassReader.SKIP_FRAMES);
    return found[0]
        && calls.contains("remove")
        && calls.contains("recalculateStreamIndex")
        && calls.stream().noneMatch(c -> c.equals("getDeliveredCount"));
  }

  private static boolean isClose(String name, String desc) {
    return name.equals("close") && desc.equals("()V");
  }

  /** True when close() is exactly `return`, as in jar 0.8.20. */
  private static boolean closeIsEmpty(ClassReader reader) {
    int[] insns = {0};
    boolean[] onlyReturn = {true};
    boolean[] found = {false};
    reader.accept(
        new ClassVisitor(Opcodes.ASM7) {
          @Override
          public MethodVisitor visitMethod(
              int access, String name, String desc, String signature, String[] exceptions) {
            if (!isClose(name, desc)) {
              return null;
            }
            found[0] = true;
            return new MethodVisitor(Opcodes.ASM7) {
              @Override
              public void visitInsn(int opcode) {
                insns[0]++;
                onlyReturn[0] &= opcode == Opcodes.RETURN;
              }

              @Override
              public void visitVarInsn(int opcode, int var) {
                onlyReturn[0] = false;
              }

              @Override
              public void visitFieldInsn(int opcode, String owner, String name, String desc) {
                onlyReturn[0] = false;
              }

              @Override
              public void visitMethodInsn(
                  int opcode, String owner, String name, String desc, boolean itf) {
                onlyReturn[0] = false;
              }

              @Override
              public void visitJumpInsn(int opcode, jdk.internal.org.objectweb.asm.Label label) {
                onlyReturn[0] = false;
              }
            };
          }
        },
        ClassReader.SKIP_DEBUG | ClassReader.SKIP_FRAMES);
    return found[0] && onlyReturn[0] && insns[0] == 1;
  }
}
